-- wrk script for bench/host_bench.lua: each wrk thread posts the pre-signed callback bodies of its
-- own file (BODIES_DIR/bodies.<thread>.txt, one JSON body per line), each once, in order; past the
-- end it starts again (those answers are duplicates, and the runner counts them apart).
local counter = 0
function setup(thread) -- luacheck: ignore (wrk's globals)
  counter = counter + 1
  thread:set("id", counter)
end

local bodies, i = {}, 0
local headers = { ["Content-Type"] = "application/json" }
function init() -- luacheck: ignore
  local dir = os.getenv("BODIES_DIR")
  for line in io.lines(dir .. "/bodies." .. id .. ".txt") do bodies[#bodies + 1] = line end -- luacheck: ignore
end

function request() -- luacheck: ignore
  i = i % #bodies + 1
  return wrk.format("POST", "/callback", headers, bodies[i]) -- luacheck: ignore
end
