std = "max"
exclude_files = { "build/**", "build-*/**", ".luarocks/**", "lua_modules/**" }
max_line_length = 120
