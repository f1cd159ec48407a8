# Thin wrapper over CMake. `make demo` and `make test` also install missing packages (scripts/bootstrap).
BUILD ?= build
LUA ?= 5.4
CMAKE_FLAGS ?=

.PHONY: all build luajit bootstrap demo test bench lint clean

all: build

build:
	cmake -S . -B $(BUILD) -DRTCADMIN_LUA=$(LUA) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j2 -- --no-print-directory

# The LuaJIT build that nginx's Lua module (and OpenResty) load: build/lua-luajit/rtcadmin.so, the
# directory `make test` builds it in too.
luajit:
	@$(MAKE) --no-print-directory build LUA=luajit BUILD=$(BUILD)/lua-luajit CMAKE_FLAGS=-DBUILD_TESTING=OFF

bootstrap:
	./scripts/bootstrap

demo: bootstrap
	@$(MAKE) --no-print-directory build
	./scripts/demo

test: bootstrap
	@$(MAKE) --no-print-directory build
	ctest --test-dir $(BUILD) --output-on-failure

# The benchmarks (bench/RESULTS.md says what each measures).
bench: build
	bench/run.sh

lint:
	luacheck .

clean:
	rm -rf $(BUILD)
