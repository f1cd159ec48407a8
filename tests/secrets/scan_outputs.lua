-- Scans every captured output of the suite (BUILD_DIR/**/test-output: what each test printed, and the
-- emulator request logs) for the test secrets, as they are and in the encodings a leak could take
-- (URL-encoded, JSON-escaped, or just their leading run of letters and digits). Fails on any hit,
-- and when a test named on the command line left no output (the scan must not pass by seeing nothing).
--   lua5.4 tests/secrets/scan_outputs.lua BUILD_DIR TEST_NAME...
local T = require "testlib"

local build = assert(arg[1], "usage: scan_outputs.lua BUILD_DIR TEST_NAME...")

local needles = {}
local function add(s, secret) if #s >= 10 then needles[s] = secret end end
for _, secret in ipairs(T.SECRETS) do
  add(secret, secret)
  add((secret:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)), secret)
  add((secret:gsub("/", "\\/")), secret)
  add(secret:match("^[%w]+"), secret)
end

local files = {}
local p = assert(io.popen("find " .. T.shell_quote(build) .. " -path '*/test-output/*' -type f"))
for path in p:lines() do files[#files + 1] = path end
p:close()

local have, hits, bytes = {}, 0, 0
for _, path in ipairs(files) do
  have[path:match("/test%-output/([^/]+)%.log$") or ""] = true
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  bytes = bytes + #text
  for needle, secret in pairs(needles) do
    local at = text:find(needle, 1, true)
    if at then
      local line = select(2, text:sub(1, at):gsub("\n", "")) + 1
      print(("LEAK: %s:%d holds test secret %s...%s"):format(path, line, secret:sub(1, 4), secret:sub(-2)))
      hits = hits + 1
    end
  end
end

local missing = 0
for i = 2, #arg do
  if not have[arg[i]] then
    print("no captured output for test " .. arg[i] .. " (run the whole suite first)")
    missing = missing + 1
  end
end
print(("scanned %d files, %d bytes, for %d secrets: %d hits"):format(#files, bytes, #T.SECRETS, hits))
os.exit((hits == 0 and missing == 0 and #files > 0) and 0 or 1)
