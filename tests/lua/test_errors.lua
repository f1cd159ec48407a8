-- Runtime failures against the emulator: every one is `nil, err` with the documented fields,
-- a one-line tostring, no secret anywhere, and the client keeps working afterwards.
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local emu = T.emulator()

local WRONG_SK = T.WRONG_SK
local UNKNOWN_APP = "000000000000000000000000"

-- Each request is sent once here, so one injected fault is one failure: a module that retries on
-- its own is asked not to (`retries = 0`) where it knows that option.
local knows_retries, probe = pcall(rtcadmin.client, { access_key = T.AK, secret_key = T.SK, endpoint = emu.url,
  retries = 0 })
if knows_retries then probe:close() end
local ONCE = knows_retries and { retries = 0 } or {}
local function client(overrides)
  local opts = {}
  for k, v in pairs(ONCE) do opts[k] = v end
  for k, v in pairs(overrides or {}) do opts[k] = v end
  return T.client(emu, opts)
end

-- Sub-second timing when LuaSocket is installed; os.time() otherwise (1 s steps).
local has_socket, socket = pcall(require, "socket")
local now = has_socket and socket.gettime or os.time

-- Checks `r, err` against want = {code, http_status, retryable, envelope, code_n, action, version,
-- any_status}; returns tostring(err).
local function expect_failure(want, r, err)
  T.eq(r, nil, "result")
  T.eq(type(err), "table", "type of err")
  local mt = getmetatable(err)
  T.ok(type(mt) == "table" and type(mt.__tostring) == "function", "err has a __tostring metamethod")
  T.eq(err.code, want.code, "err.code")
  if want.any_status then
    T.eq(type(err.http_status), "number", "type of err.http_status")
  else
    T.eq(err.http_status, want.http_status, "err.http_status")
  end
  T.eq(err.retryable, want.retryable, "err.retryable")
  T.eq(err.action, want.action or "KickUser", "err.action")
  T.eq(err.version, want.version or "2020-12-01", "err.version")
  T.eq(err.code_n, want.code_n, "err.code_n")
  T.eq(err.attempts, 1, "err.attempts")
  T.eq(type(err.message), "string", "type of err.message")
  if want.envelope then
    -- The emulator's RequestId: UTC YYYYMMDDHHMMSS plus 18 hex characters.
    T.match(err.request_id, "^%d+%x+$", "err.request_id")
    T.eq(#err.request_id, 32, "length of err.request_id")
  else
    T.eq(err.request_id, nil, "err.request_id (no envelope)")
  end

  local s = tostring(err)
  T.eq(type(s), "string", "type of tostring(err)")
  T.no_match(s, "\n", "tostring(err) is one line")
  T.no_match(s, "\r", "tostring(err) is one line")
  local prefix = err.action .. " failed: " .. want.code
  if err.http_status ~= 0 then prefix = prefix .. " (HTTP " .. err.http_status .. ")" end
  T.eq(s:sub(1, #prefix), prefix, "start of tostring(err)")
  if err.message ~= "" then T.ok(s:find(err.message, 1, true), "tostring(err) contains the message: " .. s) end
  if want.envelope then
    T.eq(s:sub(-(#err.request_id + 10)), "[request " .. err.request_id .. "]", "end of tostring(err)")
  else
    T.no_match(s, "[request ", "tostring(err) without a request id")
  end

  T.no_secrets(err, s)
  return s
end

local function expect_ok(r, meta)
  if r == nil then error("expected success, got " .. tostring(meta), 2) end
  T.eq(type(r), "table", "result")
  T.eq(type(meta), "table", "meta")
  T.eq(meta.http_status, 200, "meta.http_status")
  T.eq(meta.attempts, 1, "meta.attempts")
end

local function kick(c) return c:kick_user(T.APP, "room1", "alice") end

-- Runs fn under a temporary emulator configuration; the emulator is reset even when fn fails.
local function with_config(cfg, fn)
  emu.reset()
  emu.config(cfg)
  local ok, err = pcall(fn)
  emu.reset()
  if not ok then error(err, 0) end
end

local function kick_requests()
  return #emu.control("GET", "/_emulator/requests?action=KickUser").requests
end

-- ---------------------------------------------------------------- credentials

T.case("wrong secret: SignatureDoesNotMatch 401, not retryable, CodeN kept", function()
  local bad = client({ secret_key = WRONG_SK })
  local s = expect_failure({ code = "SignatureDoesNotMatch", http_status = 401, retryable = false,
    envelope = true, code_n = 100010 }, kick(bad))
  T.match(s, "^KickUser failed: SignatureDoesNotMatch %(HTTP 401%): ", "tostring(err)")
  T.match(s, " %[request %d+%x+%]$", "tostring(err)")
  bad:close()
  expect_ok(kick(client()))
end)

T.case("unknown access key: InvalidAccessKey 401", function()
  local c = client({ access_key = "AKLTnoSuchKeyAnywhere00" })
  expect_failure({ code = "InvalidAccessKey", http_status = 401, retryable = false, envelope = true,
    code_n = 100009 }, kick(c))
  expect_ok(kick(client()))
end)

T.case("STS key: no token and a wrong token give InvalidSecretToken 401; the right token works", function()
  local want = { code = "InvalidSecretToken", http_status = 401, retryable = false, envelope = true }
  expect_failure(want, kick(client({ access_key = T.STS_AK, secret_key = T.STS_SK })))
  expect_failure(want, kick(client({ access_key = T.STS_AK, secret_key = T.STS_SK,
    session_token = "STSrtcadminWrongToken99" })))
  expect_ok(kick(client({ access_key = T.STS_AK, secret_key = T.STS_SK, session_token = T.STS_TOKEN })))
end)

T.case("clock skew of an hour: InvalidTimestamp 400, fine again once the clocks agree", function()
  local c = client()
  with_config({ clock_offset_s = 3600 }, function()
    expect_failure({ code = "InvalidTimestamp", http_status = 400, retryable = false, envelope = true,
      code_n = 100006 }, kick(c))
  end)
  expect_ok(kick(c))
end)

-- ---------------------------------------------------------------- service-side errors

T.case("unknown AppId: InvalidParameter.NotExistAppId 400, not retryable (POST and GET)", function()
  local c = client()
  expect_failure({ code = "InvalidParameter.NotExistAppId", http_status = 400, retryable = false, envelope = true },
    c:kick_user(UNKNOWN_APP, "room1", "alice"))
  expect_failure({ code = "InvalidParameter.NotExistAppId", http_status = 400, retryable = false, envelope = true,
    action = "GetRoomOnlineUsers", version = "2023-11-01" }, c:online_users(UNKNOWN_APP, "room1"))
  expect_ok(c:online_users(T.APP, "lobby"))
end)

T.case("QPS limit: the third kick within a second is FlowLimitExceeded.QPSOverLimit 429, retryable", function()
  local c = client()
  with_config({ qps = { KickUser = 2 } }, function()
    expect_ok(kick(c))
    expect_ok(kick(c))
    expect_failure({ code = "FlowLimitExceeded.QPSOverLimit", http_status = 429, retryable = true, envelope = true,
      code_n = 100018 }, kick(c))
    T.eq(emu.stats().codes["FlowLimitExceeded.QPSOverLimit"], 1, "throttled requests")
  end)
  expect_ok(kick(c))
end)

-- ---------------------------------------------------------------- injected faults

-- One fault on the next KickUser of a client that already holds a keep-alive connection,
-- then a normal kick on the same client.
local function with_fault(kind, want, opts)
  return function()
    emu.reset()
    local c = client(opts)
    expect_ok(kick(c))
    emu.faults { { action = "KickUser", kind = kind, count = 1 } }
    expect_failure(want, kick(c))
    expect_ok(kick(c))
  end
end

T.case("throttle fault: FlowLimitExceeded.QPSOverLimit 429, retryable", with_fault("throttle",
  { code = "FlowLimitExceeded.QPSOverLimit", http_status = 429, retryable = true, envelope = true, code_n = 100018 }))

T.case("status500: InternalError 500, retryable", with_fault("status500",
  { code = "InternalError", http_status = 500, retryable = true, envelope = true, code_n = 100014 }))

T.case("internal_error_200: an Error in a 200 answer is still a failure, retryable", with_fault("internal_error_200",
  { code = "InternalError.GenerateTokenFailed", http_status = 200, retryable = true, envelope = true }))

T.case("html502: HTTPError 502, retryable, no request id", with_fault("html502",
  { code = "HTTPError", http_status = 502, retryable = true }))

T.case("malformed 200 body: MalformedResponse, not retryable", with_fault("malformed",
  { code = "MalformedResponse", http_status = 200, retryable = false }))

T.case("reset_mid_body: a transport failure (ConnectionReset), retryable", with_fault("reset_mid_body",
  { code = "ConnectionReset", any_status = true, retryable = true }))

T.case("huge answer: ResponseTooLarge, not retryable", with_fault("huge",
  { code = "ResponseTooLarge", any_status = true, retryable = false }))

T.case("drop on a new connection: ConnectionReset, HTTP status 0, retryable", function()
  emu.reset()
  local c = client()
  emu.faults { { action = "KickUser", kind = "drop", count = 1 } }
  expect_failure({ code = "ConnectionReset", http_status = 0, retryable = true }, kick(c))
  T.eq(kick_requests(), 1, "KickUser requests the emulator saw")
  expect_ok(kick(c))
end)

T.case("drop on a keep-alive connection: ConnectionReset, and the POST is not silently sent again", function()
  emu.reset()
  local c = client()
  expect_ok(kick(c))
  emu.faults { { action = "KickUser", kind = "drop", count = 1 } }
  local r, err = kick(c)
  local reported = err and err.attempts -- meta on success, err on failure
  T.eq(kick_requests() - 1, reported, "KickUser sends seen by the emulator vs attempts reported")
  expect_failure({ code = "ConnectionReset", http_status = 0, retryable = true }, r, err)
  expect_ok(kick(c))
end)

T.case("hang with timeout 0.5: Timeout, retryable, returns promptly", function()
  emu.reset()
  local c = client({ timeout = 0.5 })
  expect_ok(kick(c))
  emu.faults { { action = "KickUser", kind = "hang", count = 1 } }
  local t0 = now()
  local r, err = kick(c)
  local elapsed = now() - t0
  expect_failure({ code = "Timeout", http_status = 0, retryable = true }, r, err)
  T.ok(elapsed <= 2, "timed out after " .. elapsed .. " s, expected about 0.5 s")
  if has_socket then T.ok(elapsed >= 0.4, "returned after " .. elapsed .. " s, before the 0.5 s timeout") end
  expect_ok(kick(c))
end)

-- ---------------------------------------------------------------- transport failures

T.case("connection refused: ConnectionFailed, HTTP status 0, retryable", function()
  local c = client({ endpoint = "http://127.0.0.1:1" })
  expect_failure({ code = "ConnectionFailed", http_status = 0, retryable = true }, kick(c))
  expect_failure({ code = "ConnectionFailed", http_status = 0, retryable = true, action = "GetRoomOnlineUsers",
    version = "2023-11-01" }, c:online_users(T.APP, "room1"))
end)

T.case("DNS failure: DNSFailure, HTTP status 0, retryable", function()
  local c = client({ endpoint = "http://no-such-host.invalid:8080", timeout = 5 })
  expect_failure({ code = "DNSFailure", http_status = 0, retryable = true }, kick(c))
end)

T.case("after all of it the module still works", function()
  emu.reset()
  local c = client()
  expect_ok(kick(c))
  expect_ok(c:online_users(T.APP, "room1"))
  T.eq(emu.stats().requests, 2, "requests after reset")
end)

T.run(function() emu.stop() end)
