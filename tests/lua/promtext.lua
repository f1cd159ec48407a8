-- A strict parser of Prometheus' text exposition format 0.0.4, for the metrics suites. Stricter
-- than Prometheus itself where our output must be: every sample's family has a TYPE line before
-- it, a family's lines are contiguous, no series twice, histograms whole and consistent, counters
-- never negative. parse(text) -> result | raises "line N: what is wrong".
--
-- result.families[name] = {type, help, samples = {{name, labels = {k = v}, value}}}; result.order
-- lists the family names as they came. result:value(sample_name, labels) is the value of the one
-- sample with exactly those labels (nil when there is none); result:sum(sample_name, filter) adds up
-- the samples whose labels include filter's.
local P = {}

local TYPES = { counter = true, gauge = true, histogram = true, summary = true, untyped = true }
local NAME = "^[a-zA-Z_:][a-zA-Z0-9_:]*$"
local LABEL = "^[a-zA-Z_][a-zA-Z0-9_]*$"

-- Well-formed UTF-8 sequences, one at a time from the start.
local UTF8 = { "^[%z\1-\127]", "^[\194-\223][\128-\191]", "^[\224-\239][\128-\191][\128-\191]",
               "^[\240-\244][\128-\191][\128-\191][\128-\191]" }
local function utf8_valid(s)
  local i = 1
  while i <= #s do
    local last
    for _, p in ipairs(UTF8) do
      last = select(2, s:find(p, i))
      if last then break end
    end
    if not last then return false end
    i = last + 1
  end
  return true
end

-- A float as the format writes it: Go's ParseFloat forms, NaN and +Inf/-Inf.
local function parse_value(s)
  if s == "NaN" then return 0 / 0 end
  if s == "+Inf" or s == "Inf" then return math.huge end
  if s == "-Inf" then return -math.huge end
  if not s:find("^[+-]?%d*%.?%d*[eE]?[+-]?%d*$") or not s:find("%d") then return nil end
  return tonumber(s)
end
P.parse_value = parse_value

-- Unescapes a HELP text (\\ and \n only).
local function unescape_help(s, fail)
  return (s:gsub("\\(.?)", function(c)
    if c == "\\" then return "\\" elseif c == "n" then return "\n" end
    fail("bad escape in HELP: \\" .. c)
  end))
end

-- Reads the label set at `s` (starting after "{"): labels table, the rest after "}".
local function parse_labels(s, fail)
  local labels, names, i = {}, {}, 1
  while true do
    if s:sub(i, i) == "}" then return labels, s:sub(i + 1), names end
    local name, eq = s:match("^([^=]*)()=", i)
    if not name then fail("label without =") end
    if not name:find(LABEL) then fail("bad label name " .. string.format("%q", name)) end
    if name:sub(1, 2) == "__" then fail("reserved label name " .. name) end
    if labels[name] then fail("label " .. name .. " twice") end
    i = eq + 1
    if s:sub(i, i) ~= '"' then fail("label value not quoted") end
    i = i + 1
    local value = {}
    while true do
      local c = s:sub(i, i)
      if c == "" then fail("label value not closed") end
      if c == "\n" then fail("raw newline in a label value") end
      if c == '"' then break end
      if c == "\\" then
        local e = s:sub(i + 1, i + 1)
        if e == "\\" then value[#value + 1] = "\\"
        elseif e == '"' then value[#value + 1] = '"'
        elseif e == "n" then value[#value + 1] = "\n"
        else fail("bad escape in a label value: \\" .. e) end
        i = i + 2
      else
        value[#value + 1] = c
        i = i + 1
      end
    end
    local v = table.concat(value)
    if not utf8_valid(v) then fail("label value is not UTF-8") end
    labels[name] = v
    names[#names + 1] = name
    i = i + 1
    local c = s:sub(i, i)
    if c == "," then i = i + 1
    elseif c ~= "}" then fail("expected , or } after a label") end
  end
end

local function series_key(name, labels)
  local keys = {}
  for k in pairs(labels) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = { name }
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. string.format("%q", labels[k]) end
  return table.concat(parts, "\0")
end

-- The family a sample name belongs to, given the families declared.
local function family_of(name, families)
  local f = families[name]
  if f and f.type ~= "histogram" and f.type ~= "summary" then return name, "" end
  for _, suffix in ipairs { "_bucket", "_sum", "_count" } do
    local base = name:sub(1, -#suffix - 1)
    if name:sub(-#suffix) == suffix and families[base] and (families[base].type == "histogram" or
      (families[base].type == "summary" and suffix ~= "_bucket")) then
      return base, suffix
    end
  end
  if f and f.type == "summary" then return name, "" end -- a summary's quantile samples
  return nil
end

local Result = {}
Result.__index = Result

local function includes(labels, filter)
  for k, v in pairs(filter or {}) do
    if labels[k] ~= v then return false end
  end
  return true
end

function Result:value(name, labels)
  labels = labels or {}
  local base = family_of(name, self.families)
  for _, s in ipairs(base and self.families[base].samples or {}) do
    if s.name == name and series_key(name, s.labels) == series_key(name, labels) then
      return s.value
    end
  end
  return nil
end

function Result:sum(name, filter)
  local base, total = family_of(name, self.families), 0
  for _, s in ipairs(base and self.families[base].samples or {}) do
    if s.name == name and includes(s.labels, filter) then total = total + s.value end
  end
  return total
end

-- Checks a histogram's samples: per label set (without le), buckets with le ascending ending in
-- +Inf, cumulative counts, +Inf == _count, a _sum.
local function check_histogram(name, f, fail)
  local groups, order = {}, {}
  for _, s in ipairs(f.samples) do
    local rest = {}
    for k, v in pairs(s.labels) do if k ~= "le" then rest[k] = v end end
    local key = series_key("", rest)
    local g = groups[key]
    if not g then
      g = { buckets = {} }
      groups[key], order[#order + 1] = g, key
    end
    if s.suffix == "_bucket" then
      if s.labels.le == nil then fail(s.line, name .. "_bucket without le") end
      local le = parse_value(s.labels.le)
      if not le or le ~= le then fail(s.line, "bad le " .. s.labels.le) end
      if g.count or g.sum then fail(s.line, name .. ": a bucket after _sum or _count") end
      g.buckets[#g.buckets + 1] = { le = le, value = s.value, line = s.line }
    else
      if s.labels.le ~= nil then fail(s.line, name .. s.suffix .. " with le") end
      if s.suffix == "_sum" then g.sum = s.value else g.count = s.value end
    end
  end
  for _, key in ipairs(order) do
    local g = groups[key]
    local b = g.buckets
    if #b == 0 then fail(nil, name .. ": a series without buckets") end
    for i, x in ipairs(b) do
      if x.value < 0 or x.value ~= x.value or x.value % 1 ~= 0 then fail(x.line, name .. ": bad bucket count") end
      if i > 1 then
        if x.le <= b[i - 1].le then fail(x.line, name .. ": le not ascending") end
        if x.value < b[i - 1].value then fail(x.line, name .. ": bucket counts not cumulative") end
      end
    end
    if b[#b].le ~= math.huge then fail(b[#b].line, name .. ": the last bucket is not +Inf") end
    if g.count == nil then fail(nil, name .. ": no _count") end
    if g.sum == nil then fail(nil, name .. ": no _sum") end
    if g.count ~= b[#b].value then fail(nil, name .. ": _count differs from the +Inf bucket") end
  end
end

function P.parse(text)
  if type(text) ~= "string" then error("not text", 2) end
  if text ~= "" and text:sub(-1) ~= "\n" then error("the text does not end with a newline", 2) end
  local families, order, seen = {}, {}, {}
  local current, closed = nil, {}
  local n = 0
  local function fail(line, msg) error(string.format("line %s: %s", tostring(line or n), msg), 0) end
  local function enter(name)
    if current ~= name then
      if closed[name] then fail(n, "the lines of " .. name .. " are not together") end
      if current then closed[current] = true end
      current = name
    end
  end
  for line in text:gmatch("([^\n]*)\n") do
    n = n + 1
    local function lfail(msg) fail(n, msg) end
    -- (empty lines are allowed)
    if line:find("^%s") or line:find("%s$") then lfail("leading or trailing white space")
    elseif line:sub(1, 1) == "#" then
      local kind, name, rest = line:match("^# (%u+) (%S+) ?(.*)$")
      if kind == "HELP" or kind == "TYPE" then
        if not name:find(NAME) then lfail("bad metric name " .. name) end
        enter(name)
        local f = families[name]
        if not f then
          f = { samples = {} }
          families[name], order[#order + 1] = f, name
        end
        if #f.samples > 0 then lfail(kind .. " after the samples of " .. name) end
        if kind == "HELP" then
          if f.help then lfail("HELP twice for " .. name) end
          f.help = unescape_help(rest, lfail)
        else
          if f.type then lfail("TYPE twice for " .. name) end
          if not TYPES[rest] then lfail("bad type " .. rest) end
          f.type = rest
        end
      end -- other comments are ignored
    elseif line ~= "" then
      local name, after = line:match("^([^%s{]+)(.*)$")
      if not name or not name:find(NAME) then lfail("bad metric name") end
      local labels, names = {}, {}
      if after:sub(1, 1) == "{" then labels, after, names = parse_labels(after:sub(2), lfail) end
      local value_text, ts = after:match("^ (%S+)$")
      if not value_text then value_text, ts = after:match("^ (%S+) (%S+)$") end
      if not value_text then lfail("expected ' value [timestamp]'") end
      local value = parse_value(value_text)
      if not value then lfail("bad value " .. value_text) end
      if ts and not ts:find("^%-?%d+$") then lfail("bad timestamp " .. ts) end
      local base, suffix = family_of(name, families)
      if not base or not families[base].type then lfail("a sample of " .. name .. " before its TYPE") end
      enter(base)
      local f = families[base]
      if f.type == "counter" and (value ~= value or value < 0) then lfail("a counter below 0 or NaN") end
      local key = series_key(name, labels)
      if seen[key] then lfail("series twice: " .. name) end
      seen[key] = true
      f.samples[#f.samples + 1] = { name = name, labels = labels, label_order = names, value = value,
                                    suffix = suffix, line = n }
    end
  end
  for _, name in ipairs(order) do
    local f = families[name]
    if not f.type then fail(nil, name .. " has HELP but no TYPE") end
    if f.type == "histogram" then check_histogram(name, f, fail) end
  end
  return setmetatable({ families = families, order = order }, Result)
end

return P
