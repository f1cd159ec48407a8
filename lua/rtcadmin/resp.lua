-- RESP over nginx cosockets (ngx.socket.tcp): the Redis I/O shared by the OpenResty limiter
-- (rtcadmin.redis_limiter) and the fleet's callback queue (rtcadmin.fleet). A worker never blocks
-- on Redis. Connections come from the cosocket keep-alive pool, authenticated and selected once
-- each, as the C connection is opened (src/redis_conn.c): AUTH, SELECT, PING.
local unpack = table.unpack or unpack -- luacheck: ignore 143

local resp = {}

function resp.command(...)
  local args = { ... }
  local out = { "*", #args, "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

-- One RESP reply: value, or nil, err, is_reply_error (an error *reply*: the connection is still good).
-- A nil reply is false.
local function read_reply(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local kind, body = line:sub(1, 1), line:sub(2)
  if kind == "+" then return body end
  if kind == "-" then return nil, body, true end
  if kind == ":" then return tonumber(body) end
  if kind == "$" then
    local n = tonumber(body)
    if n < 0 then return false end
    local data, e = sock:receive(n + 2)
    if not data then return nil, e end
    return data:sub(1, n)
  end
  if kind == "*" then
    local n, list = tonumber(body), {}
    if n < 0 then return false end
    for i = 1, n do
      local v, e, reply_err = read_reply(sock)
      if v == nil then return nil, e, reply_err end
      list[i] = v
    end
    return list
  end
  return nil, "unexpected reply from Redis"
end
resp.read_reply = read_reply

-- Sends one command and reads its reply: value, or nil, err, is_reply_error.
function resp.call(sock, ...)
  local sent, err = sock:send(resp.command(...))
  if not sent then return nil, err end
  return read_reply(sock)
end

-- A pooled connection to url (rtcadmin.parse_redis_url's parts) within budget seconds: sock, or nil,
-- err, refused (refused: Redis answered the setup with an error).
function resp.connect(ngx, url, pool, budget)
  local sock = ngx.socket.tcp()
  sock:settimeout(math.max(1, math.floor(budget * 1000)))
  local ok, err = sock:connect(url.host, url.port, { pool = pool })
  if not ok then return nil, "cannot connect: " .. tostring(err) end
  if sock:getreusedtimes() == 0 then
    local setup = {}
    if url.password then
      setup[#setup + 1] = url.user and { "AUTH", url.user, url.password } or { "AUTH", url.password }
    end
    if url.db ~= 0 then setup[#setup + 1] = { "SELECT", url.db } end
    setup[#setup + 1] = { "PING" }
    for _, cmd in ipairs(setup) do
      local v, e, refused = resp.call(sock, unpack(cmd))
      if v == nil then
        sock:close()
        return nil, refused and (cmd[1] .. " refused: " .. tostring(e)) or tostring(e), refused
      end
    end
  end
  return sock
end

-- The pool name for a URL's connections: one per server, db and user.
function resp.pool_name(url) return "rtcadmin-redis:" .. url.where .. ":" .. (url.user or "") end

return resp
