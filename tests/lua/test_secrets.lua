-- Secrets: the secret key is wiped from the process's memory by close() and by __gc, and it never
-- reaches what the emulator logs. (Error messages, tostring and rtcadmin.sign's output are checked in
-- test_errors, test_client and test_signing; every output of the suite is scanned by secrets_scan.)
local T = require "testlib"

-- A secret made for this run and registered with the emulator, so calls succeed; the client process
-- gets it only through VOLC_SECRETKEY, so the Lua side of that process never holds it as a string.
local SECRET = ("WipeMe%08x%08xSecretKeyForTheWipeTest%08x%08x"):format(math.random(0, 0x7fffffff), os.time(),
  math.random(0, 0x7fffffff), os.time())
-- free() writes its own pointers over the first 16 bytes of a block: an unwiped copy still shows its tail.
local TAIL = SECRET:sub(-32)
local AK = "AKLTrtcadminWipeTest01"

-- Occurrences of `needle` in the private writable memory (heap and anonymous mappings) of process pid,
-- read through /proc/PID/mem: this process is the parent, so it may read the child's memory.
local function count_in_memory(pid, needle)
  local maps = assert(io.open("/proc/" .. pid .. "/maps"))
  local mem = assert(io.open("/proc/" .. pid .. "/mem", "rb"))
  local hits, CHUNK = 0, 1048576
  for line in maps:lines() do
    local from, to, perms, path = line:match("^(%x+)%-(%x+) (%S+) %S+ %S+ %S+%s*(.*)$")
    from, to = tonumber(from, 16), tonumber(to, 16)
    -- The environment block sits on the stack, where the kernel put it; it is not ours to wipe.
    if perms:sub(1, 2) == "rw" and (path == "" or path == "[heap]") and to - from <= 256 * 1048576 then
      local addr = from
      while addr < to do
        local n = math.min(CHUNK + #needle, to - addr)
        local ok, data = pcall(function()
          assert(mem:seek("set", addr))
          return mem:read(n)
        end)
        if ok and data then
          local pos = 1
          while true do
            local s, e = data:find(needle, pos, true)
            if not s then break end
            -- an occurrence inside the overlap is counted by the next chunk
            if s <= CHUNK or addr + n >= to then hits = hits + 1 end
            pos = e + 1
          end
        end
        addr = addr + CHUNK
      end
    end
  end
  maps:close()
  mem:close()
  return hits
end

-- The client process: makes a client from the environment, uses it, then waits for the test to
-- create each step's file before going on (the test reads its memory in between).
local CHILD = [[
  local socket = require "socket"
  local dir = os.getenv("RTCADMIN_WIPE_DIR")
  local function wait(step)
    while not io.open(dir .. "/" .. step) do socket.sleep(0.02) end
  end
  local f = assert(io.open("/proc/self/stat"))
  print("pid " .. f:read("*a"):match("^(%d+)"))
  f:close()
  local rtcadmin = require "rtcadmin"
  io.stdout:flush()
  wait("create")
  local c = rtcadmin.client { retries = 0 }
  assert(c:kick_user("661e2ebb5ffd4b0e8d3f6b1d", "room1", "alice"))
  assert(c:online_users("661e2ebb5ffd4b0e8d3f6b1d", "room1"))
  local _, err = c:kick_user("000000000000000000000000", "room1", "x")
  assert(err and err.code == "InvalidParameter.NotExistAppId")
  print("in use") io.stdout:flush()
  wait("close")
  c:close()
  print("closed") io.stdout:flush()
  wait("gc")
  local d = rtcadmin.client { retries = 0 }
  assert(d:kick_user("661e2ebb5ffd4b0e8d3f6b1d", "room1", "bob"))
  print("second in use") io.stdout:flush()
  wait("drop")
  d = nil -- luacheck: ignore
  collectgarbage() collectgarbage()
  print("collected") io.stdout:flush()
  wait("exit")
]]

T.case("the secret is in memory while a client uses it, and gone after close() and after __gc", function()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. T.shell_quote(dir)))
  local seed = assert(io.open(dir .. "/seed.json", "w"))
  seed:write(require("cjson").encode { credentials = { [AK] = { sk = SECRET } } })
  seed:close()
  local seeded = T.emulator("--seed " .. T.shell_quote(dir .. "/seed.json"))
  local env = ("VOLC_ACCESSKEY=%s VOLC_SECRETKEY=%s RTCADMIN_ENDPOINT=%s RTCADMIN_WIPE_DIR=%s "):format(AK, SECRET,
    seeded.url, T.shell_quote(dir))
  local lua = arg[-1] or "lua5.4"
  local child = assert(io.popen("env " .. env .. T.shell_quote(lua) .. " -e " .. T.shell_quote(CHILD) .. " 2>&1"))
  local function expect(line)
    local got = child:read("*l")
    if got ~= line then error("client process: expected " .. ("%q"):format(line) .. ", got " .. tostring(got), 2) end
  end
  local function go(step) assert(io.open(dir .. "/" .. step, "w")):close() end

  local pid = child:read("*l"):match("^pid (%d+)$")
  T.ok(pid, "client process pid")
  local ok, err = pcall(function()
    -- Copies that are not the module's: a sanitizer runtime keeps the environment it read at start.
    local before = count_in_memory(pid, TAIL)
    -- step, the client's reply, whether a client holds the secret then, what is checked. The
    -- steps where it is held are the positive controls: the scan finds the secret where it must be.
    for _, s in ipairs {
      { "create", "in use", true, "the secret is found in memory while the client holds it" },
      { "close", "closed", false, "copies of the secret in memory after close()" },
      { "gc", "second in use", true, "the second client holds the secret" },
      { "drop", "collected", false, "copies of the secret in memory after __gc" },
    } do
      go(s[1])
      expect(s[2])
      local extra = count_in_memory(pid, TAIL) - before
      if s[3] then T.ok(extra > 0, s[4]) else T.eq(extra, 0, s[4]) end
    end
  end)
  for _, step in ipairs { "create", "close", "gc", "drop", "exit" } do go(step) end -- lets the process finish
  child:close()
  seeded.stop()
  os.execute("rm -rf " .. T.shell_quote(dir))
  if not ok then error(err, 0) end
end)

T.case("the emulator's request log and stderr never hold a secret or session token", function()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. T.shell_quote(dir)))
  -- Not quiet: per-request lines go to stderr, captured in a file; --log adds the request log file.
  local logged = T.start_server(T.source_dir .. "/emulator/rtc_emulator.py",
    "--log " .. T.shell_quote(dir .. "/requests.log") .. " 2>" .. T.shell_quote(dir .. "/stderr.log"),
    "emulator", "/_emulator/shutdown")
  local plain = T.start_server(T.source_dir .. "/emulator/rtc_emulator.py",
    "2>" .. T.shell_quote(dir .. "/stderr2.log"), "emulator", "/_emulator/shutdown")
  for _, url in ipairs { logged.url, plain.url } do
    local fake = { url = url }
    local good = T.client(fake, { retries = 0 })
    T.ok(good:kick_user(T.APP, "room1", "alice"), "kick")
    local sts = T.client(fake, { access_key = T.STS_AK, secret_key = T.STS_SK, session_token = T.STS_TOKEN,
      retries = 0 })
    T.ok(sts:online_users(T.APP, "room1"), "STS call")
    local wrong = T.client(fake, { secret_key = T.WRONG_SK, retries = 0 })
    local _, err = wrong:kick_user(T.APP, "room1", "alice")
    T.eq(err.code, "SignatureDoesNotMatch", "wrong secret")
  end
  logged.stop()
  plain.stop()
  local seen = 0
  for _, name in ipairs { "requests.log", "stderr.log", "stderr2.log" } do
    local f = assert(io.open(dir .. "/" .. name))
    local text = f:read("*a")
    f:close()
    seen = seen + select(2, text:gsub("action=", ""))
    for _, secret in ipairs(T.SECRETS) do T.no_match(text, secret, name) end
  end
  T.ok(seen >= 6, "the logs hold the requests (" .. seen .. " lines)")
  os.execute("rm -rf " .. T.shell_quote(dir))
end)

T.run()
