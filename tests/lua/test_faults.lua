-- The fault matrix (docs/reliability.md): hostile answers from tests/servers/hostile_server.py, TLS
-- failures with certificates made here by openssl, refused connections and unresolvable names. Each
-- row has one defined outcome, reached within the configured time, and the same client then makes
-- a good call. The emulator's own faults (5xx, throttles, drops, hangs, huge bodies) are in test_errors.
local T = require "testlib"
local rtcadmin = require "rtcadmin"

local TIMEOUT = 1.5

-- Certificates: one for localhost/127.0.0.1 (self-signed, so unknown to the system store) and one
-- for another name, used as its own CA (so only the name is wrong).
local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. T.shell_quote(tmp)))
local function make_cert(name, san)
  local base = tmp .. "/" .. name
  local cmd = (T.plain_env .. "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
    .. "-keyout %s -out %s -subj /CN=%s -addext %s >/dev/null 2>&1"):format(T.shell_quote(base .. ".key"),
    T.shell_quote(base .. ".pem"), san:match("DNS:([^,]+)"), T.shell_quote("subjectAltName=" .. san))
  assert(os.execute(cmd), "openssl req failed: " .. cmd)
  return base .. ".pem", base .. ".key"
end
local LOCAL_CERT, LOCAL_KEY = make_cert("local", "DNS:localhost,IP:127.0.0.1")
local OTHER_CERT, OTHER_KEY = make_cert("other", "DNS:wrong-name.example")

local plain = T.hostile()
local tls = T.hostile(LOCAL_CERT, LOCAL_KEY)
local tls_other = T.hostile(OTHER_CERT, OTHER_KEY)
-- The TLS servers listen on 127.0.0.1; the certificates name localhost.
local function by_name(url) return (url:gsub("127%.0%.0%.1", "localhost")) end

local function client(server_url, overrides)
  local opts = { access_key = T.AK, secret_key = T.SK, endpoint = server_url, timeout = TIMEOUT, retries = 0 }
  for k, v in pairs(overrides or {}) do opts[k] = v end
  return rtcadmin.client(opts)
end

local function kick(c) return c:kick_user(T.APP, "room1", "alice") end

local function expect_ok(r, meta, what)
  if r == nil then error((what or "call") .. ": expected success, got " .. tostring(meta), 2) end
  T.eq(meta.http_status, 200, "meta.http_status")
  return r, meta
end

local function good_call(c, what)
  local r, meta = kick(c)
  return expect_ok(r, meta, what)
end

-- Checks `nil, err` against want = {code, http_status (nil: any), retryable, message (pattern)}.
local function expect_failure(want, r, err)
  T.eq(r, nil, "result")
  T.eq(type(err), "table", "type of err")
  T.eq(err.code, want.code, "err.code (" .. tostring(err and err.message) .. ")")
  if want.http_status then T.eq(err.http_status, want.http_status, "err.http_status") end
  T.eq(err.retryable, want.retryable, "err.retryable")
  if want.message then T.match(err.message, want.message, "err.message") end
  local s = tostring(err)
  -- One printable line whatever the server sent: no CR, LF, ESC or other control bytes.
  T.ok(not s:find("[%c\127]"), "tostring(err) has no control characters: " .. ("%q"):format(s))
  T.no_secrets(err, s)
  return s
end

-- A row: queue `mode` on `server`, call once, check the outcome and the time it took, then make a
-- good call on the same client.
local function row(name, server, mode, want, opts)
  T.case(name, function()
    opts = opts or {}
    server.reset()
    local c = client(opts.url or server.url, opts.client)
    if opts.warm then good_call(c, "warm-up") end -- a keep-alive connection exists when the fault comes
    server.queue(mode)
    local t0 = T.now()
    local r, err = kick(c)
    local elapsed = T.now() - t0
    if want.ok then
      expect_ok(r, err)
      if want.check then want.check(r, err) end
    else
      expect_failure(want, r, err)
      if want.check then want.check(err) end
    end
    local limit = (opts.client and opts.client.timeout or TIMEOUT) + 1
    T.ok(elapsed <= limit, ("answered after %.2f s, the configured timeout allows %.1f s"):format(elapsed, limit))
    good_call(c, "the next call on the same client")
    c:close()
  end)
end

local function not_redirected()
  for _, req in ipairs(plain.log()) do
    T.ok(req.mode ~= "stolen", "the redirect target received a request (with headers " ..
      tostring(req.headers and req.headers.Authorization) .. ")")
  end
  T.eq(#plain.log(), 1, "requests the server saw: the 302 only")
end

-- ---------------------------------------------------------------- hostile HTTP answers

row("headers trickled one byte a second: Timeout within the timeout, retryable", plain, "trickle",
  { code = "Timeout", http_status = 0, retryable = true })
row("accepts and never answers: Timeout, retryable", plain, "silent",
  { code = "Timeout", http_status = 0, retryable = true })
row("never answers on a reused connection: Timeout, retryable", plain, "silent",
  { code = "Timeout", http_status = 0, retryable = true }, { warm = true })
row("302 redirect: not followed (the signature stays here), HTTPError 302, not retryable", plain, "redirect",
  { code = "HTTPError", http_status = 302, retryable = false, check = not_redirected })
row("200 with a wrong Content-Type but a valid envelope: the body decides, success", plain, "wrong_content_type",
  { ok = true, check = function(r) T.eq(r.message, "success", "Result.message") end })
row("200 with an HTML page: MalformedResponse naming the Content-Type, not retryable", plain, "html200",
  { code = "MalformedResponse", http_status = 200, retryable = false, message = "Content%-Type text/html" })
row("200 with truncated JSON: MalformedResponse, not retryable", plain, "truncated",
  { code = "MalformedResponse", http_status = 200, retryable = false })
row("200 with an empty body: MalformedResponse, not retryable", plain, "empty200",
  { code = "MalformedResponse", http_status = 200, retryable = false, message = "0 bytes" })
row("200 with non-UTF-8 bytes in Result: success, the bytes handed over as received", plain, "non_utf8",
  { ok = true, check = function(r) T.eq(r.message, "ok\xff\xfe\xc3(", "Result.message") end })
row("error with CR/LF/ESC and invalid UTF-8 in Code and Message: escaped, one line", plain, "error_non_utf8",
  { code = "Bad\\x0D\\x0ACode", http_status = 400, retryable = false,
    check = function(err)
      T.eq(err.message, "line1\\x0D\\x0AX-Injected: 1 \\x1B[31m red \\xFF\\xFE", "err.message")
      T.eq(err.request_id, "20250101000000" .. ("ab"):rep(9), "err.request_id")
    end })
row("reset after the headers, before the body: ConnectionReset, retryable", plain, "reset_before_body",
  { code = "ConnectionReset", http_status = 0, retryable = true })
row("reset before any answer on a new connection: ConnectionReset, retryable", plain, "reset_at_once",
  { code = "ConnectionReset", http_status = 0, retryable = true })
row("reset before any answer on a reused connection: ConnectionReset, not resent", plain, "reset_at_once",
  { code = "ConnectionReset", http_status = 0, retryable = true,
    check = function() T.eq(#plain.log(), 2, "requests the server saw: the warm-up and the one reset") end },
  { warm = true })
row("endless chunked body: ResponseTooLarge at the cap, not retryable", plain, "endless",
  { code = "ResponseTooLarge", http_status = 0, retryable = false, message = "larger than 1048576 bytes" })

-- ---------------------------------------------------------------- TLS

T.case("self-signed certificate: TLSError naming the certificate, not retryable", function()
  local c = client(by_name(tls.url))
  expect_failure({ code = "TLSError", http_status = 0, retryable = false, message = "certificate" }, kick(c))
  T.eq(#tls.log(), 0, "requests that reached the server")
end)

T.case("self-signed certificate given as ca_file: verified, success (by name and by IP)", function()
  for _, url in ipairs { by_name(tls.url), tls.url } do
    local c = client(url, { ca_file = LOCAL_CERT })
    good_call(c, url)
    c:close()
  end
end)

T.case("hostname mismatch (a trusted certificate for another name): TLSError, not retryable", function()
  local c = client(by_name(tls_other.url), { ca_file = OTHER_CERT })
  expect_failure({ code = "TLSError", http_status = 0, retryable = false, message = "subject name" },
    kick(c))
  -- The same process still works: the next client on a good endpoint succeeds.
  good_call(client(by_name(tls.url), { ca_file = LOCAL_CERT }), "a verified client")
end)

T.case("https to a plain-HTTP port: TLSError, not retryable", function()
  local c = client((plain.url:gsub("^http:", "https:")))
  expect_failure({ code = "TLSError", http_status = 0, retryable = false }, kick(c))
  good_call(client(plain.url), "a client on a working endpoint")
end)

T.case("a ca_file that does not exist: TLSError, not retryable", function()
  local c = client(by_name(tls.url), { ca_file = tmp .. "/missing.pem" })
  expect_failure({ code = "TLSError", http_status = 0, retryable = false }, kick(c))
end)

-- ---------------------------------------------------------------- no server at all

-- No server at `url`: the failure, then a good call from a new client in the same process.
local function no_server(name, url, want)
  T.case(name, function()
    expect_failure(want, kick(client(url)))
    plain.reset()
    good_call(client(plain.url), "a client on a working endpoint")
  end)
end
no_server("connection refused: ConnectionFailed, retryable; the process keeps working", "http://127.0.0.1:1",
  { code = "ConnectionFailed", http_status = 0, retryable = true })
no_server("DNS failure (.invalid): DNSFailure, retryable; the process keeps working",
  "http://rtcadmin-test.invalid:8080", { code = "DNSFailure", http_status = 0, retryable = true })

-- ---------------------------------------------------------------- retries and the deadline

T.case("retries recover: two silent answers, then success on the third attempt", function()
  plain.reset()
  local c = client(plain.url, { retries = 3, timeout = 0.5, retry_base = 0.01 })
  plain.queue("silent", "reset_at_once")
  local _, meta = expect_ok(kick(c))
  T.eq(meta.attempts, 3, "meta.attempts")
  T.eq(#plain.log(), 3, "requests the server saw")
end)

T.case("retry_base = 0 and retry_cap = 0 mean no backoff: retried at once", function()
  plain.reset()
  local c = client(plain.url, { retries = 2, retry_base = 0, retry_cap = 0 })
  plain.queue("reset_at_once", "reset_at_once")
  local t0 = T.now()
  local _, meta = expect_ok(kick(c))
  T.eq(meta.attempts, 3, "meta.attempts")
  T.ok(T.now() - t0 < 1, "no backoff between the attempts")
end)

T.case("the shortest timeout, 0.001 s, is honoured: a silent server gets Timeout at once, not never", function()
  plain.reset()
  local c = client(plain.url, { timeout = 0.001, deadline = 0.001 })
  T.eq(c:info().timeout, 0.001, "info().timeout")
  plain.queue("silent")
  local t0 = T.now()
  local r, err = kick(c)
  local elapsed = T.now() - t0
  expect_failure({ code = "Timeout", http_status = 0, retryable = true }, r, err)
  T.ok(elapsed < 0.5, ("answered after %.3f s"):format(elapsed))
end)

T.case("a deadline shorter than the retries need: Timeout within the deadline", function()
  plain.reset()
  local c = client(plain.url, { retries = 5, timeout = 1, deadline = 2.2, retry_base = 0.01, retry_cap = 0.01 })
  plain.queue("silent", "silent", "silent", "silent", "silent", "silent")
  local t0 = T.now()
  local r, err = kick(c)
  local elapsed = T.now() - t0
  expect_failure({ code = "Timeout", http_status = 0, retryable = true }, r, err)
  T.ok(err.attempts >= 3, "attempts " .. err.attempts)
  T.ok(elapsed <= 2.2 + 0.5, ("answered after %.2f s, the deadline is 2.2 s"):format(elapsed))
  plain.reset()
  good_call(c, "the next call")
end)

T.case("bulk calls meet the same faults: every item answered, in order, within the deadline", function()
  plain.reset()
  local c = client(plain.url, { retries = 0, timeout = 1 })
  plain.queue("ok", "truncated", "ok", "redirect", "ok", "endless", "ok", "reset_at_once")
  local users = { "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8" }
  local results, summary = c:kick_users(T.APP, "room1", users, { concurrency = 1 })
  T.eq(#results, #users, "results")
  T.eq(summary.succeeded + summary.failed, #users, "summary")
  T.ok(summary.failed >= 3, "failures " .. summary.failed)
  for _, res in ipairs(results) do
    if not res.ok then expect_failure({ code = res.err.code, retryable = res.err.retryable }, nil, res.err) end
  end
  plain.reset()
  good_call(c, "the next call")
end)

T.run(function()
  plain.stop()
  tls.stop()
  tls_other.stop()
  os.execute("rm -rf " .. T.shell_quote(tmp))
end)
