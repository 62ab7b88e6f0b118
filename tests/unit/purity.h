/*
 * Convention 8 for the unit tests of a pure core: its sources and its public header include no
 * I/O, clock or thread header, so a simulator can replay any run from its seed. Include after
 * <cmocka.h>.
 */
#ifndef VD_TEST_PURITY_H
#define VD_TEST_PURITY_H

#include <dirent.h>
#include <stdio.h>
#include <string.h>

static void purity_check_file(const char *path, int *n_files)
{
    static const char *banned[] = {"uv.h",     "lmdb.h",    "microhttpd.h", "time.h",
                                   "unistd.h", "pthread.h", "sys/",         "stdio.h"};
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[1024];
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "#include", 8) != 0)
            continue;
        for (size_t b = 0; b < sizeof(banned) / sizeof(banned[0]); b++)
            if (strstr(line, banned[b])) {
                print_error("%s: %s", path, line);
                fail();
            }
    }
    fclose(f);
    (*n_files)++;
}

/* Checks every .c and .h under src/<module> and include/vectord/<module>.h of the tree that
 * holds this_file (pass __FILE__); fails unless at least min_files were read. */
static void purity_check_module(const char *this_file, const char *module, int min_files)
{
    char root[1024], path[1400];
    snprintf(root, sizeof(root), "%s", this_file);
    char *cut = strstr(root, "tests/unit/");
    assert_non_null(cut);
    *cut = 0;
    int n_files = 0;
    snprintf(path, sizeof(path), "%ssrc/%s", root, module);
    DIR *d = opendir(path);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 3 || (strcmp(de->d_name + len - 2, ".c") && strcmp(de->d_name + len - 2, ".h")))
            continue;
        snprintf(path, sizeof(path), "%ssrc/%s/%s", root, module, de->d_name);
        purity_check_file(path, &n_files);
    }
    closedir(d);
    snprintf(path, sizeof(path), "%sinclude/vectord/%s.h", root, module);
    purity_check_file(path, &n_files);
    assert_true(n_files >= min_files);
}

#endif
