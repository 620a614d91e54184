-- Argo CD health check for dbtcloud.io/DbtCloudJobTrigger.
-- This file is the source of truth: argocd-cm-patch.yaml embeds it verbatim
-- (`.ci/check-manifests --sync` rewrites the snippet; tests/argocd_health.rs checks both).
-- Argo CD runs Lua 5.1 (gopher-lua), the test Lua 5.4: use only what both have.
--
-- A trigger is healthy when it works (its schedule, time zone and template are accepted); the
-- runs it starts have health of their own (dbtcloudjobrun-health.lua).
--
--   no status yet           -> Progressing "Waiting for the operator"
--   spec not yet observed   -> Progressing
--   Stalled=True            -> Degraded (an invalid schedule or time zone, a refused template)
--   spec.suspend            -> Suspended
--   Ready=True              -> Healthy (message: next run, active runs)
--   otherwise               -> Progressing
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
  hs.message = "Waiting for the operator"
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
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled, "The trigger cannot start runs")
  return hs
end
local spec = obj.spec or {}
if spec.suspend == true then
  hs.status = "Suspended"
  hs.message = explain(ready, "Suspended")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = explain(ready, "Ready")
  return hs
end
hs.status = "Progressing"
hs.message = explain(ready, "Waiting for the operator")
return hs
