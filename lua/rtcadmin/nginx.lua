-- The nginx transport: inside nginx, `require "rtcadmin"` installs this layer over the client
-- methods. In phases where cosockets work (rewrite, access, content, timer, ssl_cert), a call runs
-- as a C exchange (client:exchange) driven here: the exchange paces, signs, classifies responses and
-- retries exactly as the blocking path does; this file only sleeps with ngx.sleep and moves bytes
-- with ngx.socket.tcp. In every other phase (init, init_worker, set, filters, log) the method runs
-- the libcurl path unchanged. Outcomes are logged with ngx.log either way.
local M = {}

local ngx = ngx
local concat = table.concat
local tonumber, tostring, type, select = tonumber, tostring, type, select

local COSOCKET_PHASES = {
  rewrite = true, access = true, content = true, timer = true, ssl_cert = true, ssl_session_fetch = true,
}

-- Set by M.install from the C module (which is loading this file): the error codes it makes
-- (rtcadmin.CODES) and its late-sender rule (rtcadmin.pace_late).
local CODES, pace_late

-- Host name -> address for cosocket connects, like /etc/hosts (which nginx's resolver does not read):
-- require("rtcadmin.nginx").hosts["rtc.internal"] = "10.0.0.5". TLS still checks the name.
M.hosts = {}

local KEEPALIVE_IDLE_MS = 60000
local KEEPALIVE_POOL_SIZE = 64

-- Whether this coroutine may yield to nginx's event loop (cosockets and ngx.sleep are allowed).
function M.non_blocking()
  return COSOCKET_PHASES[ngx.get_phase()] == true
end

-- A cosocket error string as the transport error codes the C core uses (rtc_net_error_code).
local function classify(err)
  err = tostring(err)
  if err == "timeout" then return CODES.Timeout end
  if err:find("resolve", 1, true) or err:find("resolver", 1, true) then return CODES.DNSFailure end
  if err:find("refused", 1, true) or err:find("unreachable", 1, true) then return CODES.ConnectionFailed end
  if err == "closed" or err:find("reset", 1, true) or err:find("broken pipe", 1, true) then
    return CODES.ConnectionReset
  end
  return CODES.TransportError
end

local function failure(sock, code, message)
  if sock then sock:close() end
  return { error = code, message = message }
end

-- Reads the body after the headers: Content-Length, chunked, or until close; at most max bytes.
local function read_body(sock, h, max)
  local te = h["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    local parts, total = {}, 0
    while true do
      local line, err = sock:receive("*l")
      if not line then return nil, err end
      local size = tonumber(line:match("^%s*(%x+)"), 16)
      if not size then return nil, "protocol", "bad chunk size line" end
      if size == 0 then
        repeat
          line, err = sock:receive("*l") -- trailers, up to the empty line
          if not line then return nil, err end
        until line == ""
        return concat(parts)
      end
      total = total + size
      if total > max then return nil, "too large" end
      local data
      data, err = sock:receive(size)
      if not data then return nil, err end
      parts[#parts + 1] = data
      line, err = sock:receive("*l")
      if not line then return nil, err end
    end
  end
  local cl = h["content-length"]
  if cl then
    local n = tonumber(cl)
    if not n or n < 0 then return nil, "protocol", "bad Content-Length" end
    if n > max then return nil, "too large" end
    if n == 0 then return "" end
    return sock:receive(n)
  end
  local parts, total = {}, 0
  while true do -- no length: the body ends when the server closes
    local data, err, partial = sock:receive(8192)
    data = data or partial
    if data and #data > 0 then
      total = total + #data
      if total > max then return nil, "too large" end
      parts[#parts + 1] = data
    end
    if err == "closed" then return concat(parts) end
    if err then return nil, err end
  end
end

-- One HTTP/1.1 exchange over a pooled cosocket; returns the response table the C exchange expects.
function M.http(w)
  if w.proxy then
    return failure(nil, CODES.TransportError, "the 'proxy' option is not supported by the nginx transport")
  end
  local sock = ngx.socket.tcp()
  sock:settimeouts(w.connect_timeout * 1000, w.timeout * 1000, w.timeout * 1000)
  local ok, err = sock:connect(M.hosts[w.host] or w.host, w.port, { pool = w.pool, pool_size = KEEPALIVE_POOL_SIZE })
  if not ok then
    return failure(nil, classify(err), "connect to " .. w.host .. ":" .. w.port .. ": " .. tostring(err))
  end
  local fresh = (sock:getreusedtimes() or 0) == 0
  if w.scheme == "https" and fresh then
    -- Verified against lua_ssl_trusted_certificate, with SNI and host name check.
    ok, err = sock:sslhandshake(nil, w.server_name, true)
    if not ok then return failure(sock, CODES.TLSError, "TLS with " .. w.server_name .. ": " .. tostring(err)) end
  end
  local head = { w.method, " ", w.path, " HTTP/1.1\r\n", concat(w.headers, "\r\n"), "\r\n" }
  if w.method ~= "GET" then head[#head + 1] = "Content-Length: " .. #w.body .. "\r\n" end
  head[#head + 1] = "\r\n"
  head[#head + 1] = w.body
  ok, err = sock:send(head)
  if not ok then return failure(sock, classify(err), "send: " .. tostring(err)) end

  local status, line, version
  repeat -- skips 1xx interim responses
    line, err = sock:receive("*l")
    if not line then return failure(sock, classify(err), "no response: " .. tostring(err)) end
    version, status = line:match("^HTTP/(1%.[01]) (%d%d%d)")
    status = tonumber(status)
    if not status then return failure(sock, CODES.ProtocolError, "bad status line") end
    local h = {}
    while true do
      line, err = sock:receive("*l")
      if not line then return failure(sock, classify(err), "reading headers: " .. tostring(err)) end
      if line == "" then break end
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if not name then return failure(sock, CODES.ProtocolError, "bad header line") end
      h[name:lower()] = value
    end
    w.response_headers = h
  until status >= 200

  local h = w.response_headers
  local body, berr, detail = read_body(sock, h, w.max_body)
  if not body then
    if berr == "too large" then
      return failure(sock, CODES.ResponseTooLarge, "response body over " .. w.max_body .. " bytes")
    elseif berr == "protocol" then
      return failure(sock, CODES.ProtocolError, detail)
    end
    return failure(sock, classify(berr), "reading body: " .. tostring(berr))
  end
  local conn = (h["connection"] or ""):lower()
  if conn:find("close", 1, true) or (version == "1.0" and not conn:find("keep-alive", 1, true)) or
     (not h["content-length"] and not h["transfer-encoding"]) then
    sock:close()
  else
    sock:setkeepalive(KEEPALIVE_IDLE_MS, KEEPALIVE_POOL_SIZE)
  end
  return { status = status, body = body, content_type = h["content-type"], new_connection = fresh }
end

-- Clients made inside nginx with limiter = {backend = "redis", ...} -> their rtcadmin.redis_limiter.
-- The C client itself runs with limiter "none"; every attempt takes its slot here, over cosockets.
local redis_pacers = setmetatable({}, { __mode = "k" })

local function sleep_until_due(seconds)
  ngx.sleep(seconds > 0 and math.ceil(seconds * 1000 + 0.5) / 1000 or 0)
end

-- Takes the send slot for request w from the Redis limiter: nil when the request may go, or the
-- response to report instead (nothing is sent; the exchange ends with that code). A slot reached
-- too late is given up for a new one by the C drivers' rule (docs/pacing.md, "late senders").
local function redis_slot(pacer, w)
  ngx.update_time()
  local deadline = ngx.now() + w.deadline_in
  while true do
    local now = ngx.now()
    local wait, err = pacer:reserve(w.key_id, w.action, w.qps, deadline)
    if not wait then return { error = CODES.LimiterError, message = err } end
    if now + wait > deadline then return { error = CODES.DeadlineExceeded } end
    sleep_until_due(wait)
    ngx.update_time()
    -- sleep_until_due rounds up to the next millisecond: up to 1.5 ms late by design.
    if not pace_late(ngx.now() - (now + wait) - 0.0015, pacer.margin) then return nil end
  end
end

-- Drives one exchange to its end; returns what the blocking call would.
function M.run(x, pacer)
  local response
  while true do
    local kind, a, b = x:step(response)
    response = nil
    if kind == "wait" then
      sleep_until_due(a)
    elseif kind == "send" then
      response = pacer and redis_slot(pacer, a) or M.http(a)
    else
      return a, b
    end
  end
end

-- Success at INFO, failures at WARN (worth retrying later) or ERR; err's text never holds a secret.
local function log_outcome(res, meta_or_err)
  if res then
    ngx.log(ngx.INFO, "rtcadmin: ", meta_or_err.action, " ok request_id=", tostring(meta_or_err.request_id),
      " attempts=", meta_or_err.attempts)
  elseif type(meta_or_err) == "table" then
    ngx.log(meta_or_err.retryable and ngx.WARN or ngx.ERR, "rtcadmin: ", tostring(meta_or_err))
  end
  return res, meta_or_err
end

-- Runs a list of exchanges on up to `concurrency` light threads; results in input order, shaped like
-- client:batch's ({ok, result, meta} / {ok = false, err}) with the same summary.
local function run_many(client, list, opts)
  local n, started = #list, ngx.now()
  local concurrency = math.min(opts and opts.concurrency or client:info().concurrency, math.max(n, 1))
  local progress = opts and opts.progress
  local results, succeeded, failed, cursor = {}, 0, 0, 0
  local function worker()
    while cursor < n do
      cursor = cursor + 1
      local i = cursor
      local res, b = log_outcome(M.run(list[i], redis_pacers[client]))
      if res then
        results[i] = { ok = true, result = res, meta = b }
        succeeded = succeeded + 1
      else
        results[i] = { ok = false, err = b }
        failed = failed + 1
      end
      if progress then progress(succeeded + failed, n, i, results[i]) end
    end
  end
  local threads = {}
  for t = 1, concurrency do threads[t] = ngx.thread.spawn(worker) end
  for t = 1, concurrency do
    local ok, err = ngx.thread.wait(threads[t])
    if not ok then error(err, 0) end
  end
  ngx.update_time()
  return results, { succeeded = succeeded, failed = failed, elapsed = ngx.now() - started }
end

-- Creates the exchange(s); an argument error is raised again at the caller's line, not this file's.
local function prepare(make, self, name, ...)
  local ok, x = pcall(make, self, name, ...)
  if not ok then error((tostring(x):gsub("^[^\n]-rtcadmin[/.]nginx%.lua:%d+: ", "")), 3) end
  return x
end

-- A client paced through Redis has no pacing of its own in C: it may only call where cosockets work.
local function check_blocking_allowed(client, name)
  if redis_pacers[client] then
    error("rtcadmin." .. name .. ": this client paces through Redis over cosockets, which the '" ..
      tostring(ngx.get_phase()) .. "' phase cannot use; call it from a request handler or ngx.timer.at", 3)
  end
end

-- rtcadmin.client(opts) inside nginx: limiter = {backend = "redis", ...} pacing goes through
-- rtcadmin.redis_limiter (cosockets) instead of the blocking C backend.
local function wrap_client(make)
  return function(opts)
    local lim = type(opts) == "table" and opts.limiter
    if type(lim) ~= "table" or lim.backend ~= "redis" then return make(opts) end
    local plain = {}
    for k, v in pairs(opts) do plain[k] = v end
    plain.limiter = "none"
    local client = make(plain)
    local pacer_opts = {}
    for k, v in pairs(lim) do
      if k ~= "backend" then pacer_opts[k] = v end
    end
    pacer_opts.margin = lim.margin or 0.05 -- nginx wakes late under load, as for the host limiter
    redis_pacers[client] = require("rtcadmin.redis_limiter").new(pacer_opts)
    return client
  end
end

-- Called once by luaopen_rtcadmin with the module table and the client method table.
function M.install(module, methods)
  CODES, pace_late = module.CODES, module.pace_late
  local SINGLE, BULK = module.METHODS.single, module.METHODS.bulk
  module.client = wrap_client(module.client)
  for _, name in ipairs(SINGLE) do
    local blocking = methods[name]
    methods[name] = function(self, ...)
      if not M.non_blocking() then
        check_blocking_allowed(self, name)
        return log_outcome(blocking(self, ...))
      end
      return log_outcome(M.run(prepare(self.exchange, self, name, ...), redis_pacers[self]))
    end
  end
  for _, name in ipairs(BULK) do
    local blocking = methods[name]
    methods[name] = function(self, ...)
      if not M.non_blocking() then
        check_blocking_allowed(self, name)
        return blocking(self, ...)
      end
      local list = prepare(self.exchanges, self, name, ...)
      local opts = select(name == "kick_users" and 4 or 2, ...) -- batch(calls, opts), ban_users(t, opts)
      return run_many(self, list, opts)
    end
  end
  -- rtcadmin.kick_user(...) etc. go through the default client's (now wrapped) methods.
  for _, list in ipairs { SINGLE, BULK } do
    for _, name in ipairs(list) do
      module[name] = function(...)
        local c = module.config()
        return c[name](c, ...)
      end
    end
  end
end

return M
