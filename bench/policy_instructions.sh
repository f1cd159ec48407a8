#!/bin/sh
# Machine instructions per event through the policy engine in steady state, counted by valgrind's
# callgrind: the same as bench/policy_bench.lua's ten-rule engine over 100k users, two runs after
# the same 200 000 events of warm-up, one going on for 50 000 events and one for 150 000; the
# difference divided by 100 000. Unlike a rate, the count does not depend on what else the machine
# is doing. From the repository root, after `make`:
#
#   bench/policy_instructions.sh            # lua5.4 and build/
#   LUA=luajit CPATH='build/lua-luajit/?.so' bench/policy_instructions.sh
#
# Takes a few minutes (callgrind runs the interpreter about 50 times slower).
set -eu

cd "$(dirname "$0")/.."
LUA=${LUA:-lua5.4}
export LUA_CPATH="${CPATH:-build/?.so};;"
export LUA_PATH="${LUAPATH:-lua/?.lua};;"
OUT=bench/out
mkdir -p "$OUT"

for n in 50000 150000; do
    valgrind --tool=callgrind --callgrind-out-file="$OUT/policy_cg.$n" \
        "$LUA" bench/policy_bench.lua "$n" 100000 200000 0 >"$OUT/policy_cg.$n.out" 2>"$OUT/policy_cg.$n.err" &
done
wait
refs() { sed -n 's/.*refs: *//p' "$OUT/policy_cg.$1.err" | tr -d ','; }
a=$(refs 50000)
b=$(refs 150000)
echo "policy engine, steady state: $(( (b - a) / 100000 )) machine instructions per event ($LUA)"
