/* What the C unit tests share: CHECK(cond, printf-style message) counts a check, and prints and
 * counts a failure; main prints "N passed, M failed" from checks and failures. One test per program. */
#ifndef RTCADMIN_TEST_CHECK_H
#define RTCADMIN_TEST_CHECK_H

#include <stdio.h>

static int checks, failures;

#define CHECK(cond, ...)                                \
    do {                                                \
        checks++;                                       \
        if (!(cond)) {                                  \
            failures++;                                 \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__);                        \
            printf("\n");                               \
        }                                               \
    } while (0)

#endif
