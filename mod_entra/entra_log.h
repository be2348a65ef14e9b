/* Logging for the server-independent core: the host (httpd, Lua) installs a sink. */
#ifndef ENTRA_LOG_H
#define ENTRA_LOG_H

#include <apr_pools.h>

typedef enum {
    ENTRA_LOG_ERR = 3,
    ENTRA_LOG_WARN = 4,
    ENTRA_LOG_NOTICE = 5,
    ENTRA_LOG_INFO = 6,
    ENTRA_LOG_DEBUG = 7
} entra_log_level;

/* A sink receives fully formatted messages; it must be thread-safe. */
typedef void entra_log_fn(void *baton, entra_log_level level, const char *msg);

/* Installs the process-wide sink (NULL silences the core). Call before threads start. */
void entra_log_set(entra_log_fn *fn, void *baton, entra_log_level max_level);

/* True when a message at this level would reach the sink. */
int entra_log_enabled(entra_log_level level);

/* Formats and emits one message; messages start with their ENTRAnnnn number. */
void entra_log(entra_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
