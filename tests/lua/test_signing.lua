-- rtcadmin.sign through Lua: every vector byte for byte, and the request forms the spec allows.
local T = require "testlib"
local cjson = require "cjson"
local rtcadmin = require "rtcadmin"

local function vector_files()
  local files = {}
  for f in (os.getenv("RTCADMIN_VECTOR_FILES") or ""):gmatch("%S+") do files[#files + 1] = f end
  if #files == 0 then files = { T.source_dir .. "/tests/vectors/signing.json" } end
  return files
end

local function read_json(path)
  local f = assert(io.open(path, "rb"))
  local doc = cjson.decode(f:read("*a"))
  f:close()
  return doc
end

local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end

local function request_from(inputs)
  return {
    method = inputs.method, host = inputs.host, path = inputs.path, query = inputs.query,
    headers = inputs.headers_before_signing,
    body = inputs.body_hex and unhex(inputs.body_hex) or inputs.body_utf8,
    access_key = inputs.ak, secret_key = inputs.sk,
    session_token = inputs.session_token ~= "" and inputs.session_token or nil,
    region = inputs.region, service = inputs.service, x_date = inputs.x_date,
  }
end

local total = 0
for _, file in ipairs(vector_files()) do
  for _, v in ipairs(read_json(file).vectors) do
    total = total + 1
    T.case("vector " .. v.name, function()
      local h, debug_info = rtcadmin.sign(request_from(v.inputs))
      T.eq(debug_info.canonical_request, v.outputs.canonical_request, "canonical request")
      T.eq(debug_info.string_to_sign, v.outputs.string_to_sign, "string to sign")
      T.eq(h.Authorization, v.outputs.authorization, "Authorization")
      T.eq(h["X-Date"], v.inputs.x_date, "X-Date")
      T.eq(h["X-Content-Sha256"], v.outputs.x_content_sha256, "X-Content-Sha256")
      T.eq(debug_info.signed_headers, v.outputs.signed_headers, "signed headers")
      local token = v.inputs.session_token
      T.eq(h["X-Security-Token"], token ~= "" and token or nil, "X-Security-Token")
    end)
  end
end

T.case("at least the 8 golden vectors were found", function() T.ok(total >= 8, "vector count " .. total) end)

local base = {
  method = "POST", host = "rtc.volcengineapi.com", path = "/",
  query = { { "Action", "KickUser" }, { "Version", "2020-12-01" } },
  headers = { ["Content-Type"] = "application/json" }, body = "{}",
  access_key = "AKLTexample", secret_key = "c2VjcmV0", x_date = "20240619T071306Z",
}
local NONE = {} -- marks a field to remove
local function with(changes)
  local r = {}
  for k, v in pairs(base) do r[k] = v end
  for k, v in pairs(changes) do
    if v == NONE then r[k] = nil else r[k] = v end
  end
  return r
end

T.case("a {key = value} query map signs like the same pairs", function()
  local a = rtcadmin.sign(base)
  local b = rtcadmin.sign(with { query = { Version = "2020-12-01", Action = "KickUser" } })
  T.eq(b.Authorization, a.Authorization, "Authorization")
end)

T.case("repeated keys keep their order; a list value in a map repeats the key", function()
  local _, d = rtcadmin.sign(with { query = { { "Tag", "zeta" }, { "A", "1" }, { "Tag", "alpha" } } })
  T.match(d.canonical_request, "\nA=1&Tag=zeta&Tag=alpha\n", "canonical query")
  local _, d2 = rtcadmin.sign(with { query = { Tag = { "zeta", "alpha" }, A = 1 } })
  T.match(d2.canonical_request, "\nA=1&Tag=zeta&Tag=alpha\n", "canonical query from map")
end)

T.case("query bytes are RFC 3986 encoded, space as %20, keys sorted by raw bytes", function()
  local _, d = rtcadmin.sign(with { query = { { "b", "a b+c*~/=&%" }, { "UserId2", "x" }, { "UserId", "" },
    { "k", "\0\1\127\128\255" } } })
  T.match(d.canonical_request, "\nUserId=&UserId2=x&b=a%%20b%%2Bc%%2A~%%2F%%3D%%26%%25&k=%%00%%01%%7F%%80%%FF\n",
    "canonical query")
end)

T.case("path segments are encoded, slashes kept, empty path is /", function()
  local _, d = rtcadmin.sign(with { path = "/sub dir/文件.json" })
  T.match(d.canonical_request, "^POST\n/sub%%20dir/%%E6%%96%%87%%E4%%BB%%B6%.json\n", "path")
  local _, d2 = rtcadmin.sign(with { path = "" })
  T.match(d2.canonical_request, "^POST\n/\n", "empty path")
end)

T.case("Host :80 and :443 are dropped, other ports kept; a Host header wins over req.host", function()
  local _, d = rtcadmin.sign(with { host = "rtc.volcengineapi.com:443" })
  T.eq(d.host, "rtc.volcengineapi.com", "443")
  _, d = rtcadmin.sign(with { host = "example.com:80" })
  T.eq(d.host, "example.com", "80")
  _, d = rtcadmin.sign(with { host = "127.0.0.1:8080" })
  T.eq(d.host, "127.0.0.1:8080", "8080")
  _, d = rtcadmin.sign(with { headers = { Host = "other.example:443", ["Content-Type"] = "application/json" } })
  T.eq(d.host, "other.example", "Host header")
end)

T.case("POST without Content-Type gets the form default, GET gets none", function()
  local h, d = rtcadmin.sign(with { headers = {} })
  T.eq(h["Content-Type"], "application/x-www-form-urlencoded; charset=utf-8", "default")
  T.eq(d.signed_headers, "content-type;host;x-content-sha256;x-date", "signed")
  local g, dg = rtcadmin.sign(with { method = "GET", headers = {}, body = "" })
  T.eq(g["Content-Type"], nil, "GET content type")
  T.eq(dg.signed_headers, "host;x-content-sha256;x-date", "GET signed")
end)

T.case("X-* and Content-Md5 headers are signed, others are not", function()
  local _, d = rtcadmin.sign(with { headers = { ["Content-Type"] = "application/json", ["X-Custom"] = "v",
    ["Content-Md5"] = "abc", Accept = "application/json", ["User-Agent"] = "ua" } })
  T.eq(d.signed_headers, "content-md5;content-type;host;x-content-sha256;x-custom;x-date", "signed")
end)

T.case("session token is added and signed last", function()
  local h, d = rtcadmin.sign(with { session_token = "tok" })
  T.eq(h["X-Security-Token"], "tok", "token header")
  T.eq(d.signed_headers, "content-type;host;x-content-sha256;x-date;x-security-token", "signed")
end)

T.case("x_date defaults to now in UTC", function()
  local h = rtcadmin.sign(with { x_date = NONE })
  local now = os.time()
  local date = h["X-Date"]
  local fmt = "!%Y%m%dT%H%M%SZ"
  T.ok(date == os.date(fmt, now) or date == os.date(fmt, now - 1), "X-Date is now: " .. date)
  T.match(h["X-Date"], "^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$", "format")
end)

T.case("the derived key depends on date, region and service (cache keyed correctly)", function()
  local seen = {}
  for _, c in ipairs { {}, { x_date = "20240620T000000Z" }, { region = "ap-singapore-1" }, { service = "iam" },
    { secret_key = "other" }, {} } do
    local h = rtcadmin.sign(with(c))
    seen[#seen + 1] = h.Authorization:match("Signature=(%x+)")
  end
  for i = 2, 5 do T.ok(seen[i] ~= seen[1], "signature " .. i .. " differs") end
  T.eq(seen[6], seen[1], "same inputs sign the same")
end)

T.case("bad requests raise clear errors", function()
  T.raises("x_date must be YYYYMMDDTHHMMSSZ", rtcadmin.sign, with { x_date = "2024-06-19T07:13:06Z" })
  T.raises("x_date must be", rtcadmin.sign, with { x_date = "20241341T000000Z" })
  T.raises("field 'method' is required", rtcadmin.sign, with { method = NONE })
  T.raises("field 'secret_key' is required", rtcadmin.sign, with { secret_key = NONE })
  T.raises("unknown field \"bodyy\"", rtcadmin.sign, with { bodyy = "x" })
  T.raises("contains CR, LF or NUL", rtcadmin.sign, with { headers = { ["X-A"] = "a\r\nX-B: b" } })
  T.raises("not a valid HTTP token", rtcadmin.sign, with { headers = { ["Bad Name"] = "v" } })
  T.raises("host is required", rtcadmin.sign, with { host = NONE })
  T.raises("access_key must be printable", rtcadmin.sign, with { access_key = "AK with space" })
  T.raises("given twice", rtcadmin.sign, with { headers = { ["X-A"] = "1", ["x-a"] = "2" } })
  T.raises("expects a table", rtcadmin.sign, "nope")
end)

T.case("the secret never appears in what sign returns", function()
  local secret = "VERY+Secret/Value=="
  local h, d = rtcadmin.sign(with { secret_key = secret })
  for _, t in ipairs { h, d } do
    for _, v in pairs(t) do T.no_match(v, secret, "sign output") end
  end
  local err = T.raises("x_date", rtcadmin.sign, with { secret_key = secret, x_date = "bad" })
  T.no_match(err, secret, "sign error")
end)

T.run()
