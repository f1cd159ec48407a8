std = "max"
exclude_files = { "build/**", "build-*/**", ".luarocks/**", "lua_modules/**" }
max_line_length = 120
-- Code that runs inside nginx reads the ngx API (a global there).
for _, f in ipairs { "lua/rtcadmin/nginx.lua", "lua/rtcadmin/callback.lua", "lua/rtcadmin/admin.lua",
                     "lua/rtcadmin/metrics.lua",
                     "lua/rtcadmin/host.lua", "examples/nginx/*.lua" } do
  files[f] = { std = "+ngx_lua" }
end
-- Rules files run in the policy sandbox, whose environment is the rule DSL (docs/policy.md).
files["examples/rules"] = {
  std = "min",
  read_globals = { "allow", "rule", "kick", "ban", "ban_everywhere", "mute", "escalate", "seconds", "minutes",
                   "hours", "days" },
  unused_args = false,
}
