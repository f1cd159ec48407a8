/* libFuzzer driver for the harnesses written in Lua (tests/fuzz/<FUZZ_CHECKER>.lua): they reach the C
 * code through the module's own entry points and check its answers. */
#include <stdint.h>

#include "fuzz_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_run_checker(FUZZ_CHECKER, data, size);
    return 0;
}
