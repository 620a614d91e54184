-- Argo CD health check for dbtcloud.io/DbtCloudCredentials and dbtcloud.io/ClusterDbtCloudCredentials.
-- This file is the source of truth: argocd-cm-patch.yaml embeds it verbatim for both kinds
-- (`.ci/check-manifests --sync` rewrites the snippet; tests/argocd_health.rs checks both).
-- Argo CD runs Lua 5.1 (gopher-lua), the test Lua 5.4: use only what both have.
--
--   no status yet           -> Progressing
--   spec not yet observed   -> Progressing
--   Ready=True              -> Healthy
--   Stalled=True            -> Degraded (a wrong key, Secret or host: needs a change)
--   otherwise               -> Progressing (being validated, or a transient error being retried)
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function explain(c, fallback)
  if c == nil then
    return fallback
  end
  local text = fallback
  if c.message ~= nil and c.message ~= "" then
    text = c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason .. ": " .. text
  end
  return text
end

local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to validate the credentials"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready, "Credentials are valid")
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  if stalled.message ~= nil and stalled.message ~= "" then
    hs.message = explain(stalled, "Credentials are not valid")
  else
    hs.message = explain(ready, "Credentials are not valid")
  end
  return hs
end
hs.status = "Progressing"
hs.message = explain(ready, "Validating the credentials")
return hs
