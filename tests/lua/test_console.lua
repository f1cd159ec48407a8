-- The moderators' console (examples/console) in a real browser: headless Chromium, driven by
-- tests/console/drive_console.py, against the example nginx and the emulator. Runs on LuaJIT (the
-- example's nginx loads the LuaJIT build).
local T = require "testlib"

local emu = T.emulator()
local APP, ROOM = T.APP, "lobby"

T.case("a moderator signs in, sees the room, kicks, bans, sees a refusal and the decision feed", function()
  for _, u in ipairs { "alice", "bob", "carol", "dave" } do emu.join(APP, ROOM, u) end
  local ng = T.example_nginx(emu)
  local shots = os.getenv("CONSOLE_SCREENSHOTS") -- to refresh docs/console/*.png
  local lua = arg[-1]
  local cmd = string.format("cd %s && CONSOLE_CALLBACK_SECRET=%s %s/usr/bin/python3 tests/console/drive_console.py " ..
    "--url %s " ..
    "--token %s --emulator %s --app %s --room %s --lua %s %s 2>&1", T.shell_quote(T.source_dir),
    T.shell_quote(ng.secret), T.plain_env, ng.url, T.shell_quote(ng.token), emu.url, APP, ROOM, T.shell_quote(lua),
    shots and ("--screenshots " .. T.shell_quote(shots)) or "") .. "; echo exit=$?"
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  io.write(out)
  T.ok(out:find("\nexit=0\n$"), "the browser run ends well:\n" .. out .. "\nnginx:\n" .. ng.log():sub(-3000))
  local _, steps = out:gsub("\nok %- ", "")
  T.ok(steps >= 10, "every step reported: " .. steps)
  T.no_match(out, "not ok", "no step failed")
  ng.stop()
end)

T.run()
