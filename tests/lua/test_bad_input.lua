-- Programming errors raise before any traffic: each row calls the module with bad input and names
-- the exact message; afterwards the emulator must have seen no request at all.
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local emu = T.emulator()
local c = T.client(emu)
local default = rtcadmin.config { access_key = T.AK, secret_key = T.SK, endpoint = emu.url }

local A, R, U = T.APP, "room1", "alice"
local SECRETS = { T.SK, T.SK2, T.STS_SK, T.STS_TOKEN, "Tm90QVNlY3JldFRvU2hvdw==" }

-- A plain message fragment as a Lua pattern.
local P = T.literal
local function bad(fname, arg, rule) return P("rtcadmin." .. fname .. ": bad argument '" .. arg .. "': " .. rule) end

local ID_RULE = "expected 1-128 characters of A-Z a-z 0-9 @ . _ -, got "
local APP_RULE = "expected 1-128 printable ASCII characters without spaces, got "
local LONG = ("x"):rep(129)
local LONG_SHOWN = '"' .. ("x"):rep(40) .. '"...'

-- {value, how the message shows it} for room_id / user_id and for app_id.
local BAD_IDS = {
  { "", '""' }, { LONG, LONG_SHOWN }, { "a b", '"a b"' }, { "a/b", '"a/b"' }, { "a#b", '"a#b"' },
  { "caf\195\169", '"caf\\xC3\\xA9"' }, { "a\0b", '"a\\x00b"' }, { "a\r\nb", '"a\\x0D\\x0Ab"' },
}
local BAD_APPS = {
  { "", '""' }, { LONG, LONG_SHOWN }, { "app id", '"app id"' }, { "app\1", '"app\\x01"' },
  { "app\0", '"app\\x00"' }, { "\195\169", '"\\xC3\\xA9"' },
}
local WRONG_TYPES = { { 42, "number" }, { true, "boolean" }, { {}, "table" }, { print, "function" } }

local rows = {}
local function row(name, fn, pattern) rows[#rows + 1] = { name, fn, pattern } end

-- ---------------------------------------------------------------- IDs, for every method

local POSITIONAL = { { "kick_user", { "app_id", "room_id", "user_id" } }, { "online_users", { "app_id", "room_id" } } }
local ALL = { app_id = true, room_id = true, user_id = true }
local TABLED = { -- method, valid fields, required IDs
  { "ban_user", { app_id = A, room_id = R, user_id = U, duration = 60 }, { app_id = true } },
  { "unban_user", { app_id = A, room_id = R, user_id = U }, { app_id = true } },
  { "update_ban", { app_id = A, room_id = R, user_id = U, duration = 60 }, { app_id = true } },
  { "mute_user", { app_id = A, room_id = R, user_id = U }, ALL },
  { "unmute_user", { app_id = A, room_id = R, user_id = U }, ALL },
}

local function id_rows(fname, arg, call, required)
  local values = arg == "app_id" and BAD_APPS or BAD_IDS
  local rule = arg == "app_id" and APP_RULE or ID_RULE
  local name = fname .. " " .. arg .. " "
  if required then row(name .. "nil", function() call(nil) end, bad(fname, arg, "required, got nil")) end
  for _, w in ipairs(WRONG_TYPES) do
    row(name .. w[2], function() call(w[1]) end, bad(fname, arg, "expected a string, got " .. w[2]))
  end
  for _, v in ipairs(values) do
    row(name .. v[2], function() call(v[1]) end, bad(fname, arg, rule .. v[2]))
  end
end

for _, m in ipairs(POSITIONAL) do
  local fname, args = m[1], m[2]
  for i, arg in ipairs(args) do
    id_rows(fname, arg, function(value)
      local a = { A, R, U }
      a[i] = value
      c[fname](c, T.unpack(a, 1, #args))
    end, true)
  end
end

for _, m in ipairs(TABLED) do
  local fname, good, required = m[1], m[2], m[3]
  for _, arg in ipairs { "app_id", "room_id", "user_id" } do
    id_rows(fname, arg, function(value)
      local t = {}
      for k, v in pairs(good) do t[k] = v end
      t[arg] = value
      c[fname](c, t)
    end, required[arg])
  end
  row(fname .. " with a string", function() c[fname](c, "x") end,
    P("rtcadmin." .. fname .. ": expects a table {app_id"))
  row(fname .. " without an argument", function() c[fname](c) end, P("rtcadmin." .. fname .. ": expects a table {"))
end

row("module-level kick_user: bad user_id", function() rtcadmin.kick_user(A, R, "bad id!") end,
  bad("kick_user", "user_id", ID_RULE .. '"bad id!"'))
row("module-level ban_user: typo", function() rtcadmin.ban_user { app_id = A, user_id = U, duraton = 60 } end,
  P('rtcadmin.ban_user: unknown field "duraton"'))

-- ---------------------------------------------------------------- durations

local function with_duration(fname, d)
  return function() c[fname](c, { app_id = A, room_id = R, user_id = U, duration = d }) end
end

local WHOLE = "expected whole seconds, got "
-- Each duration row: {value, label, message after "bad argument 'duration': ", pattern suffix}; the
-- message defaults to the range rule with the value.
local DURATIONS = {
  { "ban_user", "update_ban", min = 10, max = 604800, rows = {
    { nil, "missing", "required (seconds; 0 = no lasting ban)" },
    { -1 }, { 5 }, { 9 }, { 604801 }, { 2 ^ 53, "2^53" }, { -2 ^ 53, "-2^53" },
    { 1.5, "1.5", WHOLE .. "1.5" }, { "600", "'600'", WHOLE .. "string" }, { true, "true", WHOLE .. "boolean" },
    { 0 / 0, "NaN", WHOLE, "%-?nan" }, { math.huge, "inf", WHOLE .. "inf" } } },
  { "mute_user", min = 60, max = 259200, rows = {
    { 30 }, { 259201 }, { -60 }, { 1 }, { 90.5, "90.5", WHOLE .. "90.5" }, { "120", "'120'", WHOLE .. "string" },
    { 0 / 0, "NaN", WHOLE, "%-?nan" }, { -math.huge, "-inf", WHOLE .. "-inf" } } },
}
for _, group in ipairs(DURATIONS) do
  local range = ("must be 0 or between %d and %d seconds, got "):format(group.min, group.max)
  for _, fname in ipairs(group) do
    for _, d in ipairs(group.rows) do
      local value = d[1]
      local message = d[3] or range .. ("%d"):format(value)
      row(fname .. " duration " .. (d[2] or tostring(value)), with_duration(fname, value),
        bad(fname, "duration", message) .. (d[4] or ""))
    end
  end
end

-- ---------------------------------------------------------------- scopes, fields, flags

local function method_row(name, fname, arg, message)
  row(name, function() c[fname](c, arg) end, P("rtcadmin." .. fname .. ": " .. message))
end
method_row("ban_user without a scope", "ban_user", { app_id = A, duration = 60 },
  "give at least one of room_id, user_id, ip (the ban's scope)")
for _, ip in ipairs { { "999.1.1.1", '"999.1.1.1"' }, { "not-an-ip", '"not-an-ip"' }, { "1.2.3.4/24", '"1.2.3.4/24"' },
  { "1.2.3.4\r\n", '"1.2.3.4\\x0D\\x0A"' }, { "1.2.3.4\0", '"1.2.3.4\\x00"' }, { "", '""' } } do
  method_row("ban_user ip " .. ip[2], "ban_user", { app_id = A, ip = ip[1], duration = 60 },
    "bad argument 'ip': expected an IPv4 or IPv6 address, got " .. ip[2])
end
method_row("ban_user ip number", "ban_user", { app_id = A, ip = 16909060, duration = 60 },
  "bad argument 'ip': expected a string, got number")
method_row("ban_user typo duraton", "ban_user", { app_id = A, user_id = U, duraton = 60 },
  'unknown field "duraton" (expected app_id, room_id, user_id, ip, duration)')
method_row("ban_user camel-case AppId", "ban_user", { AppId = A, user_id = U, duration = 60 }, 'unknown field "AppId"')
method_row("ban_user positional array", "ban_user", { A, R, U, 60 }, "unknown field ")
method_row("unban_user without a scope", "unban_user", { app_id = A },
  "give room_id, user_id or both (the ban's scope)")
method_row("unban_user with a duration", "unban_user", { app_id = A, user_id = U, duration = 0 },
  'unknown field "duration" (expected app_id, room_id, user_id)')
method_row("unban_user with an ip", "unban_user", { app_id = A, ip = "1.2.3.4" }, 'unknown field "ip"')
method_row("update_ban without a scope", "update_ban", { app_id = A, duration = 60 },
  "give room_id, user_id or both (the ban's scope)")
method_row("update_ban with an ip", "update_ban", { app_id = A, ip = "1.2.3.4", duration = 60 }, 'unknown field "ip"')

for _, fname in ipairs { "mute_user", "unmute_user" } do
  local function flags(audio, video) return { app_id = A, room_id = R, user_id = U, audio = audio, video = video } end
  method_row(fname .. " audio=false video=false", fname, flags(false, false),
    "audio and video are both false: nothing to do")
  method_row(fname .. " audio=false alone", fname, flags(false, nil), "audio and video are both false: nothing to do")
  method_row(fname .. " audio='yes'", fname, flags("yes", nil), "bad argument 'audio': expected a boolean, got string")
  method_row(fname .. " video=1", fname, flags(nil, 1), "bad argument 'video': expected a boolean, got number")
end
method_row("unmute_user with a duration", "unmute_user", { app_id = A, room_id = R, user_id = U, duration = 60 },
  'unknown field "duration" (expected app_id, room_id, user_id, audio, video)')

-- ---------------------------------------------------------------- call

local function call(...)
  local args = T.pack(...)
  return function() c:call(T.unpack(args, 1, args.n)) end
end
local DR, V = "DismissRoom", "2020-12-01"
local ACTION = bad("call", "action", 'expected an Action name such as "DismissRoom"')
local VERSION = bad("call", "version", 'expected a version such as "2020-12-01"')
local function params_row(name, params, message)
  row("call params " .. name, call(DR, V, params), bad("call", "params", message))
end
local function get_row(name, params, message)
  row("call GET " .. name, call("GetRoomOnlineUsers", "2023-11-01", params, { method = "GET" }),
    P("rtcadmin.call: " .. message))
end
local deep = {}
do
  local t = deep
  for _ = 1, 40 do
    t.a = {}
    t = t.a
  end
end
local cycle = {}
cycle.self = cycle

row("call action 'Kick User'", call("Kick User", V), ACTION)
row("call action ''", call("", V), ACTION)
row("call action nil", call(nil, V), ACTION)
row("call action of 65 letters", call(("A"):rep(65), V), ACTION)
row("call action Kick_User", call("Kick_User", V), ACTION)
row("call action a number", call(123, V), ACTION)
row("call action a table", call({}, V), ACTION)
row("call version '2020/12/01'", call(DR, "2020/12/01"), VERSION)
row("call version ''", call(DR, ""), VERSION)
row("call version nil", call(DR), VERSION)
row("call version a number", call(DR, 20201201), VERSION)
params_row("a string", "AppId=x", "expected a table, got string")
params_row("a function", print, "expected a table, got function")
params_row("holding a function", { f = print }, 'a function cannot be sent as JSON (in key "f")')
params_row("holding a userdata", { x = io.stdout }, 'a userdata cannot be sent as JSON (in key "x")')
params_row("sparse array", { [1] = 1, [3] = 3 }, "sparse array (keys are not exactly 1..n)")
params_row("nested sparse array", { list = { [1] = 1, [3] = 3 } },
  'sparse array (keys are not exactly 1..n) (in key "list")')
params_row("mixing array and keys", { 1, 2, x = 3 }, "table keys must be all strings or an array 1..n")
params_row("with a boolean key", { [true] = 1 }, "table keys must be all strings or an array 1..n")
params_row("40 levels deep", deep, "tables nested deeper than 32 (or a cycle)")
params_row("with a cycle", cycle, "tables nested deeper than 32 (or a cycle)")
params_row("non-UTF-8 value", { s = "\255" }, 'string is not valid UTF-8 (in key "s")')
params_row("non-UTF-8 key", { ["\255"] = 1 }, "table key is not valid UTF-8")
params_row("NUL in a key", { ["a\0b"] = 1 }, "table key contains a NUL byte")
params_row("NaN", { x = 0 / 0 }, 'NaN and infinity cannot be sent as JSON (in key "x")')
params_row("infinity", { x = { -math.huge } }, "NaN and infinity cannot be sent as JSON")
row("call method PUT", call(DR, V, {}, { method = "PUT" }), bad("call", "opts.method", 'expected "GET" or "POST"'))
row("call method get", call(DR, V, {}, { method = "get" }), bad("call", "opts.method", 'expected "GET" or "POST"'))
row("call method true", call(DR, V, {}, { method = true }), bad("call", "opts.method", 'expected "GET" or "POST"'))
row("call opts a string", call(DR, V, {}, "GET"), bad("call", "opts", "expected a table {method = ...}"))
row("call opts typo", call(DR, V, {}, { methd = "GET" }), P('rtcadmin.call: unknown field "methd" (expected method)'))
get_row("with a table value", { AppId = {} }, "GET parameter 'AppId' must be a string, number or boolean, got table")
get_row("with an array", { "a" }, "GET parameters must have string keys")
get_row("with a NUL", { AppId = "a\0b" }, "GET parameter 'AppId' contains a NUL byte")

-- ---------------------------------------------------------------- self: dot calls and closed clients

local METHODS = { "kick_user", "ban_user", "unban_user", "update_ban", "mute_user", "unmute_user", "online_users",
  "call" }
local closed = T.client(emu)
closed:close()
for _, m in ipairs(METHODS) do
  row("client." .. m .. " with a dot", function() c[m](A, R, U) end,
    P("rtcadmin." .. m .. ": expected a client as self (use client:" .. m .. "(...), not client." .. m .. "(...))"))
  row("closed client:" .. m, function() closed[m](closed, A, R, U) end, P("rtcadmin." .. m .. ": the client is closed"))
end
row("closed client:info", function() closed:info() end, P("rtcadmin.info: the client is closed"))

-- ---------------------------------------------------------------- rtcadmin.client options

-- changes: option = value, or option = false to leave it out.
local function client_row(name, changes, message)
  row("client " .. name, function()
    local opts = { endpoint = emu.url, access_key = T.AK, secret_key = T.SK }
    for k, v in pairs(changes) do
      if v == false then opts[k] = nil else opts[k] = v end
    end
    rtcadmin.client(opts)
  end, P("rtcadmin.client: " .. message))
end
local CREDENTIAL = "access key (from options) has a character that cannot stand in a credential"
local BOTH = "give both access_key and secret_key, or neither"

row("client with a string", function() rtcadmin.client("http://x") end, "rtcadmin%.client: .*table.*got string")
client_row("unknown option", { timeoutt = 5 }, 'unknown option "timeoutt" (known: access_key, secret_key,')
client_row("timeout '5'", { timeout = "5" }, "option 'timeout' must be a number of seconds, got string")

-- Durations (seconds): none may be below 0.001. libcurl counts timeouts in whole milliseconds and
-- reads 0 as "no timeout", so 0.0004 must be refused, not rounded to 0; NaN and infinities too. 0 is
-- allowed only where it has a meaning (retry_base, retry_cap: no backoff).
local SECONDS_OPTIONS = { { "timeout", 600 }, { "connect_timeout", 600 }, { "deadline", 3600 },
  { "retry_base", 60, zero = true }, { "retry_cap", 600, zero = true } }
for _, o in ipairs(SECONDS_OPTIONS) do
  local rule = ("option '%s' must be %sbetween 0.001 and %d seconds, got "):format(o[1], o.zero and "0 or " or "", o[2])
  local values = { { 0.0004, "0.0004" }, { 0.0009999, "0.0009999" }, { 1e-9, "1e-09" }, { -0.0004, "-0.0004" },
    { -1, "-1" }, { 0 / 0, "nan" }, { math.huge, "inf" }, { -math.huge, "-inf" }, { 1e308, "1e+308" },
    { o[2] + 0.5, ("%g"):format(o[2] + 0.5) } }
  if not o.zero then values[#values + 1] = { 0, "0" } end
  for _, v in ipairs(values) do client_row(o[1] .. " " .. v[2], { [o[1]] = v[1] }, rule .. v[2]) end
  client_row(o[1] .. " '5'", { [o[1]] = "5" }, "option '" .. o[1] .. "' must be a number of seconds, got string")
end
client_row("timeout -0.0", { timeout = -0.0 }, "option 'timeout' must be between 0.001 and 600 seconds, got -0")
local REDIS = { backend = "redis", url = "redis://127.0.0.1:1" } -- refused before any connection is tried
local function redis_with(k, v)
  local t = { [k] = v }
  for key, val in pairs(REDIS) do t[key] = val end
  return { limiter = t }
end
for _, v in ipairs { { 0.0004, "0.0004" }, { 0, "0" }, { 0 / 0, "nan" }, { math.huge, "inf" }, { 61, "61" } } do
  client_row("redis timeout " .. v[2], redis_with("timeout", v[1]),
    "option 'timeout' must be between 0.001 and 60 seconds, got " .. v[2])
end
for _, v in ipairs { { 0.001, "0.001" }, { 0, "0" }, { 0 / 0, "nan" }, { -math.huge, "-inf" } } do
  client_row("redis reprobe " .. v[2], redis_with("reprobe", v[1]),
    "option 'reprobe' must be between 0.01 and 3600 seconds, got " .. v[2])
end
for _, ep in ipairs { "my host:8080", "127.0.0.1:8080/api", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:",
  "user@127.0.0.1:8080", "127.0.0.1:8080?x=1" } do
  client_row("endpoint http://" .. ep, { endpoint = "http://" .. ep },
    "option 'endpoint': \"" .. ep .. "\" is not a valid host[:port]")
end
client_row("endpoint with CRLF", { endpoint = "http://127.0.0.1:80\r\nX-Evil: 1" },
  "option 'endpoint' contains NUL, CR or LF")
client_row("endpoint ftp", { endpoint = "ftp://127.0.0.1:21" }, "option 'endpoint': scheme must be http or https")
client_row("endpoint without scheme", { endpoint = "127.0.0.1:8080" },
  "option 'endpoint' must look like https://host[:port], got \"127.0.0.1:8080\"")
client_row("endpoint and host", { host = "127.0.0.1" }, "give either 'endpoint' or 'scheme'/'host', not both")
client_row("scheme ftp", { endpoint = false, scheme = "ftp", host = "127.0.0.1" },
  "options 'scheme'/'host': scheme must be http or https")
client_row("host with a space", { endpoint = false, scheme = "http", host = "my host" },
  "options 'scheme'/'host': \"my host\" is not a valid host[:port]")
client_row("access_key with a space", { access_key = "AKLT with space" }, CREDENTIAL)
client_row("access_key with a comma", { access_key = "AKLT,x" }, CREDENTIAL)
client_row("access_key a number", { access_key = 42 }, "option 'access_key' must be a string, got number")
client_row("access_key without secret_key", { secret_key = false }, BOTH)
client_row("secret_key without access_key", { access_key = false }, BOTH)
client_row("secret_key with CRLF", { secret_key = SECRETS[5] .. "\r\n" }, "option 'secret_key' contains NUL, CR or LF")
client_row("secret_key with NUL", { secret_key = SECRETS[5] .. "\0" }, "option 'secret_key' contains NUL, CR or LF")
client_row("secret_key empty", { secret_key = "" }, "option 'secret_key' must not be empty")
client_row("secret_key a number", { secret_key = 12345 }, "option 'secret_key' must be a string, got number")
client_row("session_token with LF", { session_token = T.STS_TOKEN .. "\n" },
  "option 'session_token' contains NUL, CR or LF")
client_row("region with a slash", { region = "cn/north-1" },
  "option 'region' has a character that cannot stand in a credential scope")
client_row("region with a space", { region = "cn north-1" },
  "option 'region' has a character that cannot stand in a credential scope")
client_row("region empty", { region = "" }, "option 'region' must not be empty")
client_row("versions bad entry", { versions = { KickUser = "2020/12/01" } },
  "option 'versions': bad entry \"KickUser\" = \"2020/12/01\"")
client_row("versions a string", { versions = "2020-12-01" }, "option 'versions' must be a table")

-- ---------------------------------------------------------------- hostile option values

-- Every string that reaches a header, the URL or the credential scope: CR/LF/NUL, other control bytes,
-- invalid UTF-8, spaces, over-long values.
local HDR = "must be printable ASCII: it is sent as a header"
local NUL_CRLF = "contains NUL, CR or LF"
for _, o in ipairs { "user_agent", "session_token", "host", "region", "proxy", "ca_file", "access_key", "endpoint",
  "scheme" } do
  local base = (o == "host" or o == "scheme") and { endpoint = false, scheme = "http", host = "127.0.0.1" } or {}
  for _, v in ipairs { { "x\r\nX-Injected: 1", "CRLF" }, { "x\nX-Injected: 1", "LF" }, { "x\0y", "NUL" } } do
    local changes = {}
    for k, val in pairs(base) do changes[k] = val end
    changes[o] = v[1]
    client_row(o .. " with " .. v[2], changes, "option '" .. o .. "' " .. NUL_CRLF)
  end
  if o ~= "endpoint" and o ~= "host" and o ~= "scheme" then
    client_row(o .. " a number", { [o] = 7 }, "option '" .. o .. "' must be a string, got number")
    client_row(o .. " empty", { [o] = "" }, "option '" .. o .. "' must not be empty")
  end
end
client_row("user_agent with a control byte", { user_agent = "rtcadmin\1" }, "option 'user_agent' " .. HDR)
client_row("user_agent with DEL", { user_agent = "rtcadmin\127" }, "option 'user_agent' " .. HDR)
client_row("user_agent not ASCII", { user_agent = "caf\xC3\xA9" }, "option 'user_agent' " .. HDR)
client_row("user_agent invalid UTF-8", { user_agent = "ua\xFF" }, "option 'user_agent' " .. HDR)
client_row("session_token with a tab", { session_token = "tok\tX" }, "session token (from options) " .. HDR)
client_row("session_token invalid UTF-8", { session_token = "tok\xFE" }, "session token (from options) " .. HDR)
client_row("region invalid UTF-8", { region = "cn\xFF" },
  "option 'region' has a character that cannot stand in a credential scope")
client_row("access_key invalid UTF-8", { access_key = "AKLT\xFF" }, CREDENTIAL)
client_row("access_key with a tab", { access_key = "AKLT\tx" }, CREDENTIAL)
client_row("endpoint with a space in the host", { endpoint = "http://127.0.0.1 .example:80" },
  "option 'endpoint': \"127.0.0.1 .example:80\" is not a valid host[:port]")
client_row("endpoint with a tab", { endpoint = "http://127.0.0.1\t:80" },
  "option 'endpoint': \"127.0.0.1\\x09:80\" is not a valid host[:port]")
client_row("endpoint invalid UTF-8", { endpoint = "http://h\xFF" },
  "option 'endpoint': \"h\\xFF\" is not a valid host[:port]")
client_row("endpoint over-long", { endpoint = "http://" .. ("a"):rep(300) },
  "option 'endpoint': \"" .. ("a"):rep(40) .. "\"... is not a valid host[:port]")
local SH = "options 'scheme'/'host': "
client_row("host with a space", { endpoint = false, host = "a b" }, SH .. "\"a b\" is not a valid host[:port]")
client_row("host with a path", { endpoint = false, host = "h/x" }, SH .. "\"h/x\" is not a valid host[:port]")
client_row("scheme HTTP", { endpoint = false, scheme = "HTTP", host = "h" }, SH .. "scheme must be http or https")
client_row("ca_file a table", { ca_file = {} }, "option 'ca_file' must be a string, got table")

-- Numbers: negative, fractional, huge, NaN, and counts that are not whole.
for _, o in ipairs { { "retries", 0, 20 }, { "concurrency", 1, 64 } } do
  client_row(o[1] .. " 1.5", { [o[1]] = 1.5 }, "option '" .. o[1] .. "' must be a whole number, got 1.5")
  client_row(o[1] .. " -1", { [o[1]] = -1 }, ("option '%s' must be between %d and %d"):format(o[1], o[2], o[3]))
  client_row(o[1] .. " huge", { [o[1]] = 1e300 }, ("option '%s' must be between %d and %d"):format(o[1], o[2], o[3]))
  client_row(o[1] .. " '3'", { [o[1]] = "3" }, "option '" .. o[1] .. "' must be a number, got string")
end
-- qps: the pacing interval is 1/qps, so a tiny rate would be a wait no clock can count.
local QPS = "must be between 0.001 and 100000 requests per second, got "
client_row("qps 0", { qps = { KickUser = 0 } }, "option 'qps': \"KickUser\" " .. QPS .. "0")
client_row("qps negative", { qps = { KickUser = -5 } }, "option 'qps': \"KickUser\" " .. QPS .. "-5")
client_row("qps NaN", { qps = { default = 0 / 0 } }, "option 'qps': \"default\" " .. QPS .. "nan")
client_row("qps 1e-300", { qps = { KickUser = 1e-300 } }, "option 'qps': \"KickUser\" " .. QPS .. "1e-300")
client_row("qps 0.0009", { qps = { default = 0.0009 } }, "option 'qps': \"default\" " .. QPS .. "0.0009")
client_row("qps inf", { qps = { KickUser = math.huge } }, "option 'qps': \"KickUser\" " .. QPS .. "inf")
client_row("qps a string", { qps = { KickUser = "5" } }, "option 'qps' must map Action names to numbers")
client_row("qps Action with CRLF", { qps = { ["Kick\r\nUser"] = 5 } },
  "option 'qps': \"Kick\\x0D\\x0AUser\" is not an Action name")
client_row("versions Action with CRLF", { versions = { ["KickUser\r\n"] = "2020-12-01" } },
  "option 'versions': bad entry \"KickUser\\x0D\\x0A\" = \"2020-12-01\"")
client_row("versions value with CRLF", { versions = { KickUser = "2020-12-01\r\nX: y" } },
  "option 'versions': bad entry \"KickUser\" = \"2020-12-01\\x0D\\x0AX: y\"")
client_row("limiter unknown backend", { limiter = "redis!" }, "option 'limiter': unknown backend \"redis!\"")
client_row("limiter unknown field", { limiter = { backend = "process", size = 1 } },
  "option 'limiter': unknown field \"size\" (backend, dir, margin")
client_row("limiter dir with NUL", { limiter = { backend = "host", dir = "/tmp\0x" } }, "option 'dir' " .. NUL_CRLF)
client_row("limiter margin 2", { limiter = { margin = 2 } }, "option 'margin' must be between 0 and 1")
client_row("limiter a number", { limiter = 1 }, "option 'limiter' must be \"process\", \"host\", \"none\" or a table")
client_row("unknown option with CRLF", { ["x\r\n"] = 1 }, "unknown option \"x\\x0D\\x0A\" (known:")
client_row("unknown option, a number key", { [1] = "x" }, "unknown option \"number\" (known:")

-- Durations at the extremes of Lua numbers.
for _, fname in ipairs { "ban_user", "update_ban", "mute_user" } do
  local range = fname == "mute_user" and "must be 0 or between 60 and 259200 seconds, got "
    or "must be 0 or between 10 and 604800 seconds, got "
  if math.maxinteger then -- integers: Lua 5.3 and later
    row(fname .. " duration maxinteger", with_duration(fname, math.maxinteger),
      bad(fname, "duration", range .. math.maxinteger))
    row(fname .. " duration mininteger", with_duration(fname, math.mininteger),
      bad(fname, "duration", range .. math.mininteger))
  end
  row(fname .. " duration 1e308", with_duration(fname, 1e308), bad(fname, "duration", WHOLE .. "1e+308"))
  row(fname .. " duration 1e-9", with_duration(fname, 1e-9), bad(fname, "duration", WHOLE .. "1e-09"))
  row(fname .. " duration a table", with_duration(fname, {}), bad(fname, "duration", WHOLE .. "table"))
end

-- call: names that would reach the URL, unknown opts.
row("call action with CRLF", call("Kick\r\nUser", V), ACTION)
row("call action with NUL", call("Kick\0User", V), ACTION)
row("call action not ASCII", call("Kick\xC3\xA9", V), ACTION)
row("call version with CRLF", call(DR, "2020-12-01\r\n"), VERSION)
row("call version of 65 characters", call(DR, ("1"):rep(65)), VERSION)

-- reserve, stats, info: self and arguments.
for _, v in ipairs { { "Kick User", "with a space" }, { "Kick\r\nUser", "with CRLF" }, { "", "empty" },
  { "Kick\0User", "with NUL" }, { 42, "a number" }, { nil, "nil" }, { ("A"):rep(65), "of 65 letters" } } do
  row("reserve action " .. v[2], function() c:reserve(v[1]) end,
    bad("reserve", "action", 'expected an Action name such as "KickUser"'))
end
for _, m in ipairs { "reserve", "stats", "info", "batch", "kick_users", "ban_users" } do
  row("client." .. m .. " with a dot", function() c[m]("KickUser") end,
    P("rtcadmin." .. m .. ": expected a client as self"))
  row("closed client:" .. m, function() closed[m](closed, "KickUser") end,
    P("rtcadmin." .. m .. ": the client is closed"))
end

-- Bulk calls: every call is checked before anything is sent.
local function batch_row(name, fn, message) row(name, fn, P(message)) end
batch_row("batch calls a string", function() c:batch("kick") end, "rtcadmin.batch: expects a list of calls, got string")
batch_row("batch call a string", function() c:batch { "kick_user" } end,
  'rtcadmin.batch: calls[1] must be a table {"method", args...}, got string')
batch_row("batch unknown method", function() c:batch { { "kick_everyone", A } } end,
  'rtcadmin.batch: calls[1]: unknown method "kick_everyone"')
batch_row("batch method a number", function() c:batch { { 1, A } } end,
  'rtcadmin.batch: calls[1][1] must be a method name such as "kick_user"')
batch_row("batch second call bad", function() c:batch { { "kick_user", A, R, U }, { "kick_user", A, R, "bad id" } } end,
  "rtcadmin.kick_user: bad argument 'user_id': " .. ID_RULE .. '"bad id"')
batch_row("batch opts typo", function() c:batch({ { "kick_user", A, R, U } }, { concurency = 2 }) end,
  'rtcadmin.batch: unknown option "concurency" in opts (progress, concurrency)')
batch_row("batch opts concurrency 0", function() c:batch({ { "kick_user", A, R, U } }, { concurrency = 0 }) end,
  "rtcadmin.batch: opts.concurrency must be a whole number from 1 to 64")
batch_row("batch opts concurrency 2.5", function() c:batch({ { "kick_user", A, R, U } }, { concurrency = 2.5 }) end,
  "rtcadmin.batch: opts.concurrency must be a whole number from 1 to 64")
batch_row("batch opts progress a string", function() c:batch({ { "kick_user", A, R, U } }, { progress = "x" }) end,
  "rtcadmin.batch: opts.progress must be a function")
batch_row("kick_users user_ids nil", function() c:kick_users(A, R) end,
  "rtcadmin.kick_users: bad argument 'user_ids': expected a list of user IDs")
batch_row("kick_users a bad user", function() c:kick_users(A, R, { U, "a\r\nb" }) end,
  "rtcadmin.kick_user: bad argument 'user_id': " .. ID_RULE .. '"a\\x0D\\x0Ab"')
batch_row("kick_users opts typo", function() c:kick_users(A, R, { U }, { progres = print }) end,
  'rtcadmin.batch: unknown option "progres" in opts (progress, concurrency)')
batch_row("ban_users typo", function() c:ban_users { app_id = A, user_ids = { U }, duraton = 60 } end,
  'rtcadmin.ban_users: unknown field "duraton" (expected app_id, room_id, user_ids, duration)')
batch_row("ban_users user_ids a string", function() c:ban_users { app_id = A, user_ids = U, duration = 60 } end,
  "rtcadmin.ban_users: bad argument 'user_ids': expected a list of user IDs")
batch_row("ban_users duration -1", function() c:ban_users { app_id = A, user_ids = { U }, duration = -1 } end,
  "rtcadmin.ban_user: bad argument 'duration': must be 0 or between 10 and 604800 seconds, got -1")

-- rtcadmin.sign: every string that reaches a header or the canonical request.
local function sign_row(name, changes, message)
  row("sign " .. name, function()
    local req = { method = "POST", host = "rtc.volcengineapi.com", access_key = "AKLTx", secret_key = SECRETS[5] }
    for k, v in pairs(changes) do req[k] = v end
    rtcadmin.sign(req)
  end, P("rtcadmin.sign: " .. message))
end
sign_row("unknown field", { secretkey = "x" }, 'unknown field "secretkey"')
sign_row("path with NUL", { path = "/a\0b" }, "field 'path' contains a NUL byte")
sign_row("host with NUL", { host = "h\0x" }, "field 'host' contains a NUL byte")
sign_row("host with CRLF", { host = "h\r\nX: y" }, "host contains CR, LF or NUL")
sign_row("method with CRLF", { method = "POST\r\n" }, "method is not an HTTP token")
sign_row("method with a space", { method = "PO ST" }, "method is not an HTTP token")
sign_row("method empty", { method = "" }, "method is empty")
sign_row("header value with CRLF", { headers = { ["X-A"] = "1\r\nX-B: 2" } },
  "header 'x-a' value contains CR, LF or NUL")
sign_row("header value with NUL", { headers = { ["X-A"] = "1\0" } }, "header 'x-a' value contains CR, LF or NUL")
sign_row("header name with a space", { headers = { ["X A"] = "1" } }, "header name is not a valid HTTP token")
sign_row("header name with CRLF", { headers = { ["X\r\nA"] = "1" } }, "header name is not a valid HTTP token")
sign_row("header value a number", { headers = { ["X-A"] = 1 } }, "headers must map string names to string values")
sign_row("session_token with CRLF", { session_token = "t\r\nX: y" }, "session_token contains CR, LF or NUL")
sign_row("session_token with NUL", { session_token = "t\0" }, "field 'session_token' contains a NUL byte")
sign_row("access_key with a space", { access_key = "AK LT" }, "access_key must be printable ASCII")
sign_row("region with a slash", { region = "cn/x" }, "region must be printable ASCII")
sign_row("service with CRLF", { service = "rtc\r\n" }, "service must be printable ASCII")
sign_row("x_date malformed", { x_date = "2025-01-01" }, "x_date must be YYYYMMDDTHHMMSSZ (UTC)")
sign_row("x_date with NUL", { x_date = "20250101T000000Z\0" }, "field 'x_date' contains a NUL byte")
sign_row("secret_key empty", { secret_key = "" }, "secret_key is empty")
sign_row("query a string", { query = "a=b" }, "field 'query' must be a table")
sign_row("query value a table", { query = { a = { {} } } },
  "query value for 'a' must be a string or a number, got table")
sign_row("body a number", { body = 1 }, "field 'body' must be a string, got number")

-- The OpenResty Redis limiter (what a client with a Redis limiter uses inside nginx): the C backend's
-- bounds, checked before anything else.
local redis_limiter = require "rtcadmin.redis_limiter"
local function limiter_row(k, value, range, shown) -- shown: how the message shows value, as a pattern
  row("redis_limiter.new " .. k .. " " .. tostring(value), function()
    redis_limiter.new { url = "redis://127.0.0.1:1", [k] = value }
  end, P(("rtcadmin.redis_limiter.new: %s must be between %s, got "):format(k, range)) .. shown)
end
limiter_row("timeout", 0.0004, "0.001 and 60 seconds", "0%.0004")
limiter_row("timeout", 0 / 0, "0.001 and 60 seconds", "%-?nan")
limiter_row("timeout", "1", "0.001 and 60 seconds", "1")
limiter_row("reprobe", 0.001, "0.01 and 3600 seconds", "0%.001")
limiter_row("reprobe", math.huge, "0.01 and 3600 seconds", "inf")
limiter_row("margin", 2, "0 and 1", "2")
limiter_row("margin", 0 / 0, "0 and 1", "%-?nan")

-- rtcadmin.sleep: 0 (no sleep) to 86400 seconds.
for _, v in ipairs { { -1, "-1" }, { -0.0004, "-0.0004" }, { 0 / 0, "NaN" }, { math.huge, "inf" },
  { 86401, "86401" } } do
  row("sleep " .. v[2], function() rtcadmin.sleep(v[1]) end, P("rtcadmin.sleep: expects 0..86400 seconds"))
end

-- ---------------------------------------------------------------- run the rows

T.case("the emulator starts with no requests", function()
  emu.reset()
  T.eq(emu.stats().requests, 0, "requests")
end)

for _, r in ipairs(rows) do
  local name, fn, pattern = r[1], r[2], r[3]
  T.case(name, function()
    local before = c:info().requests + default:info().requests
    local ok, err = pcall(T.raises, pattern, fn)
    local sent = c:info().requests + default:info().requests - before
    if not ok then error(err .. (sent > 0 and " (and it sent " .. sent .. " request)" or ""), 0) end
    T.eq(sent, 0, "requests sent by the module")
    T.match(err, "^[^\n]*test_bad_input%.lua:%d+: ", "the message points at the caller's line")
    for _, secret in ipairs(SECRETS) do T.no_match(err, secret, "error message") end
  end)
end

-- Hostile values from the environment, in a child process (the variables are read when a client is made).
T.case("hostile VOLC_* and RTCADMIN_ENDPOINT values raise before any traffic", function()
  local lua = arg[-1] or "lua5.4"
  local cases = {
    { { VOLC_ACCESSKEY = "AKLTenv", VOLC_SECRETKEY = "s", VOLC_SESSIONTOKEN = "tok\1" },
      "session token (from environment) must be printable ASCII: it is sent as a header" },
    { { VOLC_ACCESSKEY = "AKLTenv", VOLC_SECRETKEY = "s\r\nX: 1" },
      "credentials from environment are empty or contain NUL, CR or LF" },
    { { VOLC_ACCESSKEY = "AKLT\r\nenv", VOLC_SECRETKEY = "s" },
      "access key (from environment) has a character that cannot stand in a credential" },
    { { VOLC_ACCESSKEY = "AKLTenv", VOLC_SECRETKEY = "s", RTCADMIN_ENDPOINT = "http://h\r\nX-Injected: 1" },
      "RTCADMIN_ENDPOINT: \"h\\x0D\\x0AX-Injected: 1\" is not a valid host[:port]" },
  }
  for _, case in ipairs(cases) do
    local env = ""
    for k, v in pairs(case[1]) do env = env .. k .. "=" .. T.shell_quote(v) .. " " end
    local p = assert(io.popen("env " .. env .. T.shell_quote(lua) .. " -e " .. T.shell_quote(
      "print(select(2, pcall(require('rtcadmin').client, {})))") .. " 2>&1"))
    local out = p:read("*a")
    p:close()
    T.ok(out:find("rtcadmin.client: " .. case[2], 1, true), "child said " .. ("%q"):format(out))
  end
  T.eq(emu.stats().requests, 0, "API requests received by the emulator")
end)

T.case("close() twice is fine, and a closed client shows no credentials", function()
  local x = T.client(emu)
  x:close()
  x:close()
  for _, secret in ipairs(SECRETS) do T.no_match(tostring(x), secret, "tostring(closed client)") end
end)

T.case("after all rows the emulator saw no request", function()
  T.ok(#rows >= 200, "row count " .. #rows)
  T.eq(emu.stats().requests, 0, "API requests received by the emulator")
end)

T.run(function() emu.stop() end)
