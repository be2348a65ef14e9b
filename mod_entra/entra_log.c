#include <stdarg.h>
#include <stdio.h>

#include "entra_log.h"

static entra_log_fn *log_fn;
static void *log_baton;
static entra_log_level log_max = ENTRA_LOG_INFO;

void entra_log_set(entra_log_fn *fn, void *baton, entra_log_level max_level)
{
    log_fn = fn;
    log_baton = baton;
    log_max = max_level;
}

int entra_log_enabled(entra_log_level level)
{
    return log_fn != NULL && level <= log_max;
}

void entra_log(entra_log_level level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    if (!entra_log_enabled(level))
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    log_fn(log_baton, level, buf);
}
