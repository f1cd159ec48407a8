-- The operators' metrics in the Prometheus text exposition format (0.0.4), from the counters the
-- module already keeps: client:stats() (API calls), engine:stats() (the policy engine) and
-- callback.stats() (the callback receiver). One renderer for nginx's /metrics and for
-- `rtcadmin run --metrics FILE`. See docs/metrics.md.
--
-- Counters travel as plain nested tables of numbers ("counters"):
--   { api = { [Action] = { outcomes = { ok = n, [code] = n }, retries = n, throttled = n, waited = s,
--                          count = n, sum = s, buckets = { n <= LATENCY_BUCKETS[i], ... } } },
--     callbacks = { [status] = n },
--     policy = { events = { [outcome] = n }, decisions = { [rule] = { [action] = { [outcome] = n } } },
--                rule_errors = { [rule] = n } },
--     state_keys = n }
-- so that adding up workers, engines or clients is adding up tables (M.add). Every label value comes
-- from a bounded set: Action names (the client keeps at most 32), error codes (at most 16 per Action,
-- the rest as "other"), fixed outcome and status words, and the names of the loaded rules; never an
-- id or text from a request.
local M = {}

local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local string_format, concat, sort = string.format, table.concat, table.sort

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

-- The latency histogram's bucket bounds (seconds): the C module's, or the same list without it.
local function bounds()
  local ok, core = pcall(require, "rtcadmin")
  return ok and core.LATENCY_BUCKETS or { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }
end

M.EVENT_OUTCOMES = { "decided", "ignored", "duplicate", "allowed", "invalid" }

---------------------------------------------------------------------------------------------------
-- Counters from the module's statistics.

-- An error code as a label value: the API's and the module's codes are words with dots
-- ("InvalidParameter.UserId"); anything else is counted as "other".
local function code_label(code)
  if type(code) == "string" and #code <= 64 and code:find("^[%w_.%-]+$") then return code end
  return "other"
end

-- client:stats() -> the api part of the counters.
function M.api_counters(stats)
  local api = {}
  for action, a in pairs(stats or {}) do
    local outcomes = { ok = a.succeeded or 0 }
    for code, n in pairs(a.failures or {}) do
      local label = code_label(code)
      outcomes[label] = (outcomes[label] or 0) + n
    end
    local buckets = {}
    for i, n in ipairs(a.buckets or {}) do buckets[i] = n end
    api[action] = { outcomes = outcomes, retries = a.retries or 0, throttled = a.throttled or 0,
                    waited = a.waited or 0, count = a.sent or 0, sum = a.latency_sum or 0, buckets = buckets }
  end
  return api
end

-- engine:stats() -> the policy part of the counters. Events are counted once each: those that
-- reached the rules ("decided") and those that stopped before (ignored: no rule watches the type;
-- duplicate; allowed: allow-listed; invalid).
function M.policy_counters(st)
  local dropped = st.ignored + st.duplicates + st.allowed + st.invalid
  local events = { decided = math.max(0, st.events - dropped), ignored = st.ignored, duplicate = st.duplicates,
                   allowed = st.allowed, invalid = st.invalid }
  local decisions = {}
  for key, n in pairs(st.by_outcome or {}) do
    local action, outcome, rule = key:match("^(%S+) (%S+) (.*)$")
    if action then
      local by_rule = decisions[rule] or {}
      decisions[rule] = by_rule
      local by_action = by_rule[action] or {}
      by_rule[action] = by_action
      by_action[outcome] = (by_action[outcome] or 0) + n
    end
  end
  local rule_errors = {}
  for rule in pairs(st.by_rule or {}) do rule_errors[rule] = 0 end -- every loaded rule, 0 until it fails
  for rule, n in pairs(st.errors_by_rule or {}) do rule_errors[rule] = n end
  return { events = events, decisions = decisions, rule_errors = rule_errors }
end

-- Adds the numbers of t into `into` (nested tables alike); returns into.
function M.add(into, t)
  for k, v in pairs(t) do
    if type(v) == "table" then
      if type(into[k]) ~= "table" then into[k] = {} end
      M.add(into[k], v)
    elseif type(v) == "number" then
      into[k] = (tonumber(into[k]) or 0) + v
    end
  end
  return into
end

-- The counters of a process: opts.clients (clients), opts.engines (policy engines), opts.callbacks
-- (a table like callback.stats()'s), opts.fleet (a fleet engine's {read, acked, written, restored,
-- shards}). Engines' state keys are added up.
function M.collect(opts)
  local t = { api = {}, policy = { events = {}, decisions = {}, rule_errors = {} } }
  for _, c in ipairs(opts.clients or {}) do M.add(t.api, M.api_counters(c:stats())) end
  for _, e in ipairs(opts.engines or {}) do
    local st = e:stats()
    M.add(t.policy, M.policy_counters(st))
    t.state_keys = (t.state_keys or 0) + st.keys
  end
  if opts.callbacks then t.callbacks = M.add({}, opts.callbacks) end
  if opts.fleet then t.fleet = M.add({}, opts.fleet) end
  return t
end

---------------------------------------------------------------------------------------------------
-- The text format.

-- A sample value: integers as such, other numbers in the fewest digits that read back the same.
local function number_text(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then return string_format("%d", v) end
  for digits = 15, 17 do
    local s = string_format("%." .. digits .. "g", v)
    if tonumber(s) == v then return s end
  end
  return string_format("%.17g", v)
end
M.number_text = number_text

-- Whether s is valid UTF-8 (the format's label values must be).
local function utf8_valid(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = c < 0x80 and 1 or c >= 0xC2 and c < 0xE0 and 2 or c >= 0xE0 and c < 0xF0 and 3
      or c >= 0xF0 and c < 0xF5 and 4 or nil
    if not len or i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local d = s:byte(j)
      if d < 0x80 or d > 0xBF then return false end
    end
    i = i + len
  end
  return true
end

-- A label value written between double quotes: \ " and newline escaped; a value that is not
-- UTF-8 (a rule name, say) has its bytes above 0x7F written as "?".
local ESCAPES = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
local function label_value(v)
  v = tostring(v)
  if not utf8_valid(v) then v = v:gsub("[\128-\255]", "?") end
  return (v:gsub('[\\"\n]', ESCAPES))
end
M.label_value = label_value

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function labels_text(names, values)
  if #names == 0 then return "" end
  local parts = {}
  for i, name in ipairs(names) do parts[i] = name .. '="' .. label_value(values[i]) .. '"' end
  return "{" .. concat(parts, ",") .. "}"
end

-- The families, in the order they are written: name, type, help, labels, and the samples (a
-- function(counters, emit) calling emit(label values, value[, name suffix, extra label])).
local FAMILIES = {
  { "rtcadmin_api_requests_total", "counter", "API calls that ended, by Action and outcome (ok, or the error code).",
    { "action", "outcome" }, function(t, emit)
      for _, action in ipairs(sorted_keys(t.api)) do
        local outcomes = t.api[action].outcomes or {}
        for _, outcome in ipairs(sorted_keys(outcomes)) do emit({ action, outcome }, outcomes[outcome]) end
      end
    end },
  { "rtcadmin_api_request_duration_seconds", "histogram",
    "Time from sending an API request to its answer, each attempt, by Action.", { "action" }, "histogram" },
  { "rtcadmin_api_retries_total", "counter", "API attempts after the first of their call, by Action.", { "action" },
    "retries" },
  { "rtcadmin_api_throttled_total", "counter", "API attempts the service answered with a throttle, by Action.",
    { "action" }, "throttled" },
  { "rtcadmin_limiter_wait_seconds_total", "counter", "Seconds API calls waited for their limiter slot, by Action.",
    { "action" }, "waited" },
  { "rtcadmin_callbacks_total", "counter", "RTC callbacks answered, by status.", { "status" }, function(t, emit)
      if not t.callbacks then return end
      for _, status in ipairs(require("rtcadmin.callback").STATUSES) do emit({ status }, t.callbacks[status] or 0) end
    end },
  { "rtcadmin_policy_events_total", "counter",
    "Events the policy engine took, by outcome (decided: evaluated by the rules).", { "outcome" }, function(t, emit)
      local events = t.policy and t.policy.events
      if not events or next(events) == nil then return end
      for _, outcome in ipairs(M.EVENT_OUTCOMES) do emit({ outcome }, events[outcome] or 0) end
    end },
  { "rtcadmin_policy_decisions_total", "counter",
    "Policy decisions by rule, action and final outcome (dry_run, ok, extended, already, failed, recovered).",
    { "rule", "action", "outcome" }, function(t, emit)
      local decisions = t.policy and t.policy.decisions or {}
      for _, rule in ipairs(sorted_keys(decisions)) do
        for _, action in ipairs(sorted_keys(decisions[rule])) do
          local outcomes = decisions[rule][action]
          for _, outcome in ipairs(sorted_keys(outcomes)) do emit({ rule, action, outcome }, outcomes[outcome]) end
        end
      end
    end },
  { "rtcadmin_policy_rule_errors_total", "counter", "Errors raised by a rule's condition, by rule.", { "rule" },
    function(t, emit)
      local errors = t.policy and t.policy.rule_errors or {}
      for _, rule in ipairs(sorted_keys(errors)) do emit({ rule }, errors[rule]) end
    end },
  { "rtcadmin_policy_state_keys", "gauge", "(app, room, user) and room records the policy engine keeps.", {},
    function(t, emit)
      if t.state_keys then emit({}, t.state_keys) end
    end },
  -- A fleet engine's (rtcadmin run --from; docs/fleet.md): no samples elsewhere.
  { "rtcadmin_fleet_entries_total", "counter",
    "Log entries this fleet engine read, and acknowledged (with the checkpoint that covers them).", { "state" },
    function(t, emit)
      if t.fleet then
        emit({ "acknowledged" }, t.fleet.acked)
        emit({ "read" }, t.fleet.read)
      end
    end },
  { "rtcadmin_fleet_checkpoints_total", "counter", "Shard checkpoints this fleet engine wrote, and restored.",
    { "op" }, function(t, emit)
      if t.fleet then
        emit({ "restored" }, t.fleet.restored)
        emit({ "written" }, t.fleet.written)
      end
    end },
  { "rtcadmin_fleet_shards", "gauge", "Shards this fleet engine holds the lease of.", {}, function(t, emit)
      if t.fleet then emit({}, t.fleet.shards) end
    end },
  { "rtcadmin_build_info", "gauge", "The rtcadmin version and the Lua it runs on; always 1.", { "version", "lua" },
    function(_, emit, info) emit({ info.version, info.lua }, 1) end },
}

-- A per-Action field of the api counters as samples.
local function per_action(field)
  return function(t, emit)
    for _, action in ipairs(sorted_keys(t.api)) do emit({ action }, t.api[action][field] or 0) end
  end
end

local function histogram(t, emit)
  local les = bounds()
  for _, action in ipairs(sorted_keys(t.api)) do
    local a = t.api[action]
    local count = a.count or 0
    for i, le in ipairs(les) do emit({ action }, a.buckets and a.buckets[i] or 0, "_bucket", number_text(le)) end
    emit({ action }, count, "_bucket", "+Inf")
    emit({ action }, a.sum or 0, "_sum")
    emit({ action }, count, "_count")
  end
end

local function build_info()
  local ok, core = pcall(require, "rtcadmin")
  local jit = rawget(_G, "jit")
  return { version = ok and core._VERSION or "unknown", lua = jit and jit.version or _VERSION }
end

-- The exposition text of the counters: every family with its HELP and TYPE lines (a family with
-- nothing counted yet has no samples), samples sorted by their labels.
function M.render(t)
  local out, info = {}, build_info()
  for _, f in ipairs(FAMILIES) do
    local name, kind, help, labels, samples = f[1], f[2], f[3], f[4], f[5]
    if samples == "histogram" then samples = histogram
    elseif type(samples) == "string" then samples = per_action(samples) end
    out[#out + 1] = "# HELP " .. name .. " " .. help:gsub("\\", "\\\\"):gsub("\n", "\\n")
    out[#out + 1] = "# TYPE " .. name .. " " .. kind
    samples(t, function(values, v, suffix, le)
      local names = labels
      if le then
        names, values = { labels[1], "le" }, { values[1], le }
      end
      out[#out + 1] = name .. (suffix or "") .. labels_text(names, values) .. " " .. number_text(v)
    end, info)
  end
  out[#out + 1] = ""
  return concat(out, "\n")
end

---------------------------------------------------------------------------------------------------
-- Counters in a lua_shared_dict (nginx): one key per number, added to with dict:incr.

-- Path segments of a key: strings with % / # escaped, list indexes as #NNN (three digits, so that
-- sorted keys list a histogram's buckets in order).
local function segment(k)
  if type(k) == "number" then return string_format("#%03d", k) end
  return (tostring(k):gsub("[%%/#]", function(c) return string_format("%%%02X", c:byte()) end))
end

local function unsegment(s)
  local index = s:match("^#(%d+)$")
  if index then return tonumber(index) end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Nested counters -> { ["api/KickUser/count"] = n, ... }.
function M.flatten(t, prefix, into)
  into = into or {}
  prefix = prefix or ""
  for k, v in pairs(t) do
    if type(v) == "table" then M.flatten(v, prefix .. segment(k) .. "/", into)
    elseif type(v) == "number" then into[prefix .. segment(k)] = v end
  end
  return into
end

-- The flat keys back as nested counters (keys outside `prefix` are left out).
function M.unflatten(flat, prefix)
  prefix = prefix or ""
  local t = {}
  for key, v in pairs(flat) do
    if key:sub(1, #prefix) == prefix then
      local node, parts = t, {}
      for s in key:sub(#prefix + 1):gmatch("[^/]+") do parts[#parts + 1] = unsegment(s) end
      for i = 1, #parts - 1 do
        local p = parts[i]
        if type(node[p]) ~= "table" then node[p] = {} end
        node = node[p]
      end
      node[parts[#parts]] = v
    end
  end
  return t
end

-- A publisher adds the increments of a process's counters since its last call to a dict, so that
-- the dict holds the sum over every process that ever published there (a worker that exits has
-- published what it counted; a new one starts from 0).
--
-- A histogram stays consistent for a reader in another worker although neither side is atomic: the
-- publisher writes keys in descending order (count before the buckets, the highest bucket first)
-- and M.read reads in ascending order (buckets from the lowest, then count), so a reader never
-- sees a bucket above a higher one or above the count.
local Publisher = {}
Publisher.__index = Publisher

function M.publisher(dict, prefix)
  return setmetatable({ dict = dict, prefix = prefix or "", last = {} }, Publisher)
end

-- Adds t's increments since the last publish (or rebase); true, or nil, err when the dict refused
-- one (that increment is tried again next time).
function Publisher:publish(t)
  local flat, last, dict, prefix = M.flatten(t), self.last, self.dict, self.prefix
  local keys = {}
  for k, v in pairs(flat) do
    if v ~= (last[k] or 0) then keys[#keys + 1] = k end
  end
  sort(keys, function(a, b) return a > b end)
  local failed
  for _, k in ipairs(keys) do
    local ok, err = dict:incr(prefix .. k, flat[k] - (last[k] or 0), 0)
    if ok then last[k] = flat[k] else failed = err end
  end
  if failed then return nil, failed end
  return true
end

-- Takes t as what was published, without adding anything.
function Publisher:rebase(t)
  self.last = M.flatten(t)
end

-- The counters published in dict under prefix, read in ascending key order (see the publisher).
function M.read(dict, prefix)
  prefix = prefix or ""
  local keys = {}
  for _, k in ipairs(dict:get_keys(0)) do
    if k:sub(1, #prefix) == prefix then keys[#keys + 1] = k end
  end
  sort(keys)
  local flat = {}
  for _, k in ipairs(keys) do flat[k] = dict:get(k) end
  return M.unflatten(flat, prefix)
end

---------------------------------------------------------------------------------------------------
-- nginx: each worker publishes its client's counters; /metrics adds up what was published.

local API_PREFIX = "api/"

-- In init_worker_by_lua: publishes the worker's client counters to the lua_shared_dict named
-- opts.dict every opts.every seconds (default 1) and when the worker exits (a reload). opts.client:
-- the worker's client, or a function returning it. Returns the publisher (M.handler's opts.worker).
function M.start_worker(opts)
  local ngx = ngx
  local dict = type(opts) == "table" and ngx.shared[opts.dict or ""]
  if not dict then error("rtcadmin.metrics.start_worker: dict must name a lua_shared_dict", 2) end
  local get_client = opts.client
  if type(get_client) ~= "function" then
    local c = get_client
    get_client = function() return c end
  end
  local pub = M.publisher(dict, API_PREFIX)
  local client
  function pub.now()
    local c = get_client()
    if not c then return true end
    if c ~= client then client, pub.last = c, {} end -- a new client counts from 0
    return pub:publish(M.api_counters(c:stats()))
  end
  local ok, err = ngx.timer.every(opts.every or 1, function()
    -- Also on the worker's way out (the timer's premature run): its last counts are not lost.
    local published, perr = pub.now()
    if not published then ngx.log(ngx.WARN, "rtcadmin.metrics: cannot publish: ", tostring(perr)) end
  end)
  if not ok then error("rtcadmin.metrics.start_worker: cannot start its timer: " .. tostring(err), 2) end
  return pub
end

-- The /metrics content handler. opts: dict (the lua_shared_dict start_worker publishes to), worker
-- (start_worker's return: this worker's latest counts go in first), callbacks (the callback
-- receiver's dict, optional), host (an rtcadmin.host, optional: the policy engine's counters), token
-- (optional: then only requests with `Authorization: Bearer <token>` are answered).
function M.handler(opts)
  local ngx = ngx
  if type(opts) ~= "table" or not ngx.shared[opts.dict or ""] then
    error("rtcadmin.metrics.handler: dict must name a lua_shared_dict", 2)
  end
  if opts.token ~= nil and (type(opts.token) ~= "string" or #opts.token < 16) then
    error("rtcadmin.metrics.handler: token must be a string of at least 16 characters", 2)
  end
  local dict, worker, host, token = ngx.shared[opts.dict], opts.worker, opts.host, opts.token
  local callback = opts.callbacks and require("rtcadmin.callback")
  local admin = token and require("rtcadmin.admin")
  return function()
    local method = ngx.req.get_method()
    if method ~= "GET" and method ~= "HEAD" then return ngx.exit(405) end
    if token and not admin.authorized(token) then
      ngx.header["WWW-Authenticate"] = 'Bearer realm="rtcadmin"'
      return ngx.exit(401)
    end
    if worker then worker.now() end
    local t = { api = M.read(dict, API_PREFIX) }
    if callback then t.callbacks = callback.stats(opts.callbacks) end
    if host then
      local c = host:counters()
      t.policy, t.state_keys = c.policy, c.state_keys
    end
    ngx.header["Content-Type"] = M.CONTENT_TYPE
    ngx.print(M.render(t))
  end
end

---------------------------------------------------------------------------------------------------
-- `rtcadmin run --metrics FILE`: the text written to a file, node_exporter's textfile collector way.

-- A writer of collect()'s counters to path every `every` seconds: writer.due_in() (seconds until
-- the next write), writer.tick() (writes when due), writer.write() (now). Each write goes beside
-- the file and is renamed over it (rtcadmin.save_file): a collector never reads half a file.
function M.file_writer(path, every, collect)
  local core = require "rtcadmin"
  local w, last = {}, -math.huge
  function w.write()
    last = core.time()
    return core.save_file(path, M.render(collect()))
  end
  function w.due_in() return math.max(0, last + every - core.time()) end
  function w.tick()
    if w.due_in() == 0 then return w.write() end
    return true
  end
  return w
end

return M
