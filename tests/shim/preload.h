/* Running a test binary under the fsync-counting shim (fsync_count.c in this folder): call
 * vd_test_shim_preload(argv) first thing in main(). When the shim is not loaded yet, the binary
 * re-executes itself with the shim in LD_PRELOAD, found through VD_FSYNC_SHIM (ctest sets it) or
 * at tests/shim/libvd_fsync_count.so next to the binary. Header-only, for tests. */
#ifndef VD_TEST_SHIM_PRELOAD_H
#define VD_TEST_SHIM_PRELOAD_H

#include <dlfcn.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The shim's controls, set by vd_test_shim_preload once the shim is loaded. */
static uint64_t (*vd_shim_count)(void);
static void (*vd_shim_fail)(int on);

/* Returns 0 with the controls set when the shim is loaded; otherwise re-executes the binary
 * under it and returns nonzero (the test must fail, not skip) only when that is impossible,
 * after saying why on stderr. */
static inline int vd_test_shim_preload(char **argv)
{
    vd_shim_count = (uint64_t(*)(void))dlsym(RTLD_DEFAULT, "vd_shim_fsync_count");
    vd_shim_fail = (void (*)(int))dlsym(RTLD_DEFAULT, "vd_shim_fsync_fail");
    if (vd_shim_count && vd_shim_fail)
        return 0;
    char path[4096];
    const char *env = getenv("VD_FSYNC_SHIM");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        char exe[4096];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0)
            return fprintf(stderr, "fsync shim: cannot locate this binary\n"), 1;
        exe[n] = 0;
        snprintf(path, sizeof path, "%s/tests/shim/libvd_fsync_count.so", dirname(exe));
    }
    if (getenv("VD_SHIM_REEXEC")) {
        fprintf(stderr, "fsync shim: LD_PRELOAD=%s did not provide vd_shim_fsync_count\n", path);
        return 1;
    }
    if (access(path, R_OK) != 0) {
        fprintf(stderr,
                "fsync shim not found at %s: build the vd_fsync_count target (tests/shim) or set "
                "VD_FSYNC_SHIM; syncs cannot be counted without it\n",
                path);
        return 1;
    }
    char pre[8192], asan[4096];
    const char *old = getenv("LD_PRELOAD");
    snprintf(pre, sizeof pre, "%s%s%s", path, old && *old ? ":" : "", old ? old : "");
    const char *ao = getenv("ASAN_OPTIONS");
    /* The sanitizer runtime is linked into the binary; a preloaded library ahead of it is fine
     * here because the shim itself is not instrumented. */
    snprintf(asan, sizeof asan, "%s%sverify_asan_link_order=0", ao && *ao ? ao : "",
             ao && *ao ? ":" : "");
    setenv("LD_PRELOAD", pre, 1);
    setenv("ASAN_OPTIONS", asan, 1);
    setenv("VD_SHIM_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    perror("fsync shim: execv");
    return 1;
}

#endif
