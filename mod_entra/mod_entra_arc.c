/* Azure Arc challenge keys are readable only by root (or the himds group), and httpd
 * children run unprivileged: a helper process forked by the root parent at startup reads
 * them on request over a Unix socket that only the httpd user may use. It validates the
 * path and size as the protocol requires and keeps nothing. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <unixd.h>
#include <apr_strings.h>
#include <apr_thread_proc.h>

#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define KEY_MAX 4096
#define REQ_MAX 1024

static const char *sock_path;
static const char *helper_key_dir;

/* The same rules the core applies: a .key file directly in the directory, no links. */
static int read_key(const char *path, char *out, size_t *len, const char **why)
{
    size_t dl = strlen(helper_key_dir), n = strlen(path);
    struct stat st;
    ssize_t r;
    int fd;

    if (n <= dl + 5 || strncmp(path, helper_key_dir, dl) != 0 || path[dl] != '/' ||
        strchr(path + dl + 1, '/') || strcmp(path + n - 4, ".key") != 0 || strstr(path, "..")) {
        *why = "path outside the Arc token directory";
        return -1;
    }
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
        *why = "not a regular file";
        return -1;
    }
    if (st.st_size <= 0 || st.st_size > KEY_MAX) {
        *why = "key file size not in 1..4096 bytes";
        return -1;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        *why = "cannot open the key file";
        return -1;
    }
    r = read(fd, out, KEY_MAX);
    close(fd);
    while (r > 0 && (out[r - 1] == '\n' || out[r - 1] == '\r'))
        r--;
    if (r <= 0) {
        *why = "cannot read the key file";
        return -1;
    }
    for (n = 0; n < (size_t)r; n++)
        if ((unsigned char)out[n] < 0x20 || out[n] == 0x7f) {
            memset(out, 0, (size_t)r);
            *why = "key file holds control characters";
            return -1;
        }
    *len = (size_t)r;
    return 0;
}

static void serve(int fd)
{
    char req[REQ_MAX + 1], key[KEY_MAX + 4];
    size_t got = 0, klen = 0;
    const char *why = NULL;
    ssize_t r;
    struct timeval tv = {2, 0};

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (got < REQ_MAX && (r = read(fd, req + got, REQ_MAX - got)) > 0) {
        got += (size_t)r;
        if (memchr(req, '\n', got))
            break;
    }
    req[got] = '\0';
    req[strcspn(req, "\n")] = '\0';
    if (read_key(req, key + 3, &klen, &why) == 0) {
        memcpy(key, "OK ", 3);
        (void)!write(fd, key, klen + 3);
    }
    else {
        (void)!write(fd, "ERR ", 4);
        (void)!write(fd, why, strlen(why));
    }
    memset(key, 0, sizeof(key));
}

static void helper_main(int lfd)
{
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        serve(fd);
        close(fd);
    }
}

apr_status_t entra_arc_helper_start(apr_pool_t *pconf, server_rec *s, const char *key_dir)
{
    struct sockaddr_un sa;
    apr_proc_t *proc = apr_pcalloc(pconf, sizeof(*proc));
    apr_status_t rv;
    int lfd;

    sock_path = ap_runtime_dir_relative(pconf, "mod_entra_arc.sock");
    helper_key_dir = apr_pstrdup(pconf, key_dir);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(sock_path) >= sizeof(sa.sun_path)) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "ENTRA0010: socket path too long: %s",
                     sock_path);
        return APR_EGENERAL;
    }
    strcpy(sa.sun_path, sock_path);
    unlink(sock_path);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 16) != 0) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, errno, s,
                     "ENTRA0011: cannot create the Arc helper socket %s", sock_path);
        if (lfd >= 0)
            close(lfd);
        return APR_EGENERAL;
    }
    /* Only httpd's own user may ask. */
    if (geteuid() == 0 &&
        chown(sock_path, ap_unixd_config.user_id, ap_unixd_config.group_id) != 0)
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s, "ENTRA0012: chown %s failed", sock_path);
    chmod(sock_path, 0600);

    rv = apr_proc_fork(proc, pconf);
    if (rv == APR_INCHILD) {
        helper_main(lfd);
        _exit(0);
    }
    close(lfd);
    if (rv != APR_INPARENT) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "ENTRA0013: cannot fork the Arc helper");
        return rv;
    }
    apr_pool_note_subprocess(pconf, proc, APR_KILL_AFTER_TIMEOUT);
    return APR_SUCCESS;
}

const char *entra_arc_read_key(void *baton, apr_pool_t *p, const char *path, const char **why)
{
    struct sockaddr_un sa;
    char buf[KEY_MAX + 16];
    size_t got = 0;
    ssize_t r;
    int fd;
    struct timeval tv = {3, 0};
    const char *out = NULL;
    (void)baton;

    if (!sock_path) {
        *why = "Arc helper not running";
        return NULL;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, sock_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (fd >= 0)
            close(fd);
        *why = "cannot reach the Arc helper";
        return NULL;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (write(fd, path, strlen(path)) < 0 || write(fd, "\n", 1) < 0) {
        close(fd);
        *why = "cannot ask the Arc helper";
        return NULL;
    }
    while (got < sizeof(buf) - 1 && (r = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
        got += (size_t)r;
    close(fd);
    buf[got] = '\0';
    if (got > 3 && !strncmp(buf, "OK ", 3))
        out = apr_pstrmemdup(p, buf + 3, got - 3);
    else
        *why = got > 4 && !strncmp(buf, "ERR ", 4) ? apr_pstrdup(p, buf + 4)
                                                    : "no answer from the Arc helper";
    memset(buf, 0, sizeof(buf));
    return out;
}
