-- Argo CD health check for dbtcloud.io/DbtCloudJobRun.
-- This file is the source of truth: argocd-cm-patch.yaml embeds it verbatim
-- (`.ci/check-manifests --sync` rewrites the snippet; tests/argocd_health.rs checks both).
-- Argo CD runs Lua 5.1 (gopher-lua), the test Lua 5.4: use only what both have.
--
--   no status yet                      -> Progressing "Waiting for the operator"
--   Succeeded                          -> Healthy
--   Failed, TimedOut, Cancelled        -> Degraded (final: the run did not produce its result)
--   spec.suspend (not finished)        -> Suspended
--   spec not yet observed              -> Progressing
--   Stalled=True (not finished)        -> Degraded (needs a change from the user)
--   Pending, Queued, Starting, Running -> Progressing
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

local function nonempty(s)
  return s ~= nil and s ~= ""
end

-- The operator's summary: statusMessage, else the Ready condition's message.
local function summary(status)
  if nonempty(status.statusMessage) then
    return status.statusMessage
  end
  local ready = condition(status, "Ready")
  if ready ~= nil and nonempty(ready.message) then
    return ready.message
  end
  return nil
end

local function describe(prefix, status)
  local text = summary(status)
  if text ~= nil then
    return prefix .. ": " .. text
  end
  return prefix
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local phase = status.phase
local spec = obj.spec or {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
local stale = generation ~= nil and (observed == nil or observed < generation)

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe("Succeeded", status)
  return hs
end
if phase == "Failed" or phase == "TimedOut" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = describe(phase, status)
  return hs
end

if spec.suspend == true then
  hs.status = "Suspended"
  if stale then
    hs.message = "Suspend requested; waiting for the operator to observe generation "
      .. string.format("%d", generation)
  else
    hs.message = describe("Suspended", status)
  end
  return hs
end

if stale then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  if nonempty(stalled.message) then
    hs.message = phase .. ": " .. stalled.message
  else
    hs.message = describe(phase, status)
  end
  return hs
end

if phase == "Pending" or phase == "Queued" or phase == "Starting" or phase == "Running" then
  hs.status = "Progressing"
  hs.message = describe(phase, status)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
