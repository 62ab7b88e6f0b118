/* Leveled logging to stderr, one write(2) per line so threads never interleave. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vectord/core.h"

static _Atomic int cur_level = VD_LOG_INFO;
static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

int vd_log_level_parse(const char *s, enum vd_log_level *out)
{
    static const char *keys[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, keys[i]) == 0) {
            *out = (enum vd_log_level)i;
            return 0;
        }
    }
    return VD_EINVAL;
}

void vd_log_set_level(enum vd_log_level lvl)
{
    atomic_store(&cur_level, (int)lvl);
}

enum vd_log_level vd_log_get_level(void)
{
    return (enum vd_log_level)atomic_load(&cur_level);
}

void vd_log(enum vd_log_level lvl, const char *fmt, ...)
{
    if ((int)lvl < atomic_load(&cur_level) || lvl >= VD_LOG_OFF)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, names[lvl]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void *vd_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        vd_log_error("out of memory allocating %zu bytes", n);
        abort();
    }
    return p;
}

void *vd_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) {
        vd_log_error("out of memory allocating %zu x %zu bytes", n, sz);
        abort();
    }
    return p;
}

char *vd_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = vd_xmalloc(n);
    memcpy(p, s, n);
    return p;
}
