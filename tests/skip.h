/* Skipping a cmocka test so that CI notices. A test that cannot do its check on this machine
 * (no root, no interface, no shim) calls VD_SKIP with the reason instead of cmocka's skip(): on a
 * developer's machine the test is skipped and the reason printed, but with VD_TEST_NO_SKIP=1 in
 * the environment (scripts/test.sh sets it) the test fails with the reason, because a skipped
 * test proves nothing and a green run would hide it. Make the condition hold where a test can
 * (create the interface, load the shim) rather than skip. Header-only, for tests; include it
 * after <cmocka.h>. */
#ifndef VD_TEST_SKIP_H
#define VD_TEST_SKIP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* True when skips must fail: VD_TEST_NO_SKIP is set to anything but "" or "0". */
static inline int vd_test_no_skip(void)
{
    const char *e = getenv("VD_TEST_NO_SKIP");
    return e && *e && strcmp(e, "0") != 0;
}

/* Ends the calling test: skipped, or failed under VD_TEST_NO_SKIP, naming why (printf format). */
#define VD_SKIP(...)                                                                              \
    do {                                                                                          \
        char vd_why_[512];                                                                        \
        snprintf(vd_why_, sizeof vd_why_, __VA_ARGS__);                                           \
        if (vd_test_no_skip())                                                                    \
            fail_msg("cannot run here, and VD_TEST_NO_SKIP is set: %s", vd_why_);                 \
        print_message("skipped: %s\n", vd_why_);                                                  \
        skip();                                                                                   \
    } while (0)

#endif
