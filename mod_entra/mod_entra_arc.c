/* Azure Arc challenge keys are readable only by root (or the himds group), and httpd
 * children run unprivileged: a helper process forked by the root parent at startup reads
 * them on request over a Unix socket that only the httpd user may use. It keeps nothing,
 * reads only what the core's entra_arc_key_read allows, gives each client a deadline, holds
 * no descriptor of the parent's but its socket, and dies with the parent.
 *
 * Whoever runs as httpd's User can ask it, so any such process can obtain the machine's Arc
 * identity: the same trust as membership of the himds group. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <unixd.h>
#include <apr_strings.h>
#include <apr_thread_proc.h>
#include <openssl/crypto.h>

#include "entra_arc.h"
#include "mod_entra.h"

APLOG_USE_MODULE(entra);

#define REQ_MAX 1024
#define CLIENT_DEADLINE_MS 1000 /* a client has this long to ask and be answered */
#define PARENT_CHECK_MS 500     /* how often the idle helper checks that its parent lives */
#define CLIENT_WAIT_MS 3000     /* a child waits this long for the answer (others may be ahead) */

static const char *sock_path;
static const char *helper_key_dir;

static long ms_left(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)(deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

/* Reads one request line, all of it within the client's deadline. */
static size_t read_request(int fd, char *req, const struct timespec *deadline)
{
    size_t got = 0;
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        long left = ms_left(deadline);
        ssize_t r;
        if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
            return 0;
        r = recv(fd, req + got, REQ_MAX - got, MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            return 0;
        got += (size_t)r;
        if (memchr(req, '\n', got) || got == REQ_MAX)
            return got;
    }
}

static void reply(int fd, const char *a, size_t alen, const char *b, size_t blen)
{
    /* The answer is small: a socket buffer takes it without blocking; MSG_DONTWAIT makes
     * sure a client that does not read cannot hold the helper. */
    (void)!send(fd, a, alen, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (blen)
        (void)!send(fd, b, blen, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void serve(int fd)
{
    char req[REQ_MAX + 1], key[ENTRA_ARC_KEY_MAX + 1];
    size_t got, klen = 0;
    const char *why = NULL;
    struct timespec deadline;
    struct ucred cred;
    socklen_t cl = sizeof(cred);

    /* Only httpd's user (and root) may ask, whatever the socket's mode says. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 ||
        (cred.uid != 0 && cred.uid != ap_unixd_config.user_id)) {
        reply(fd, "ERR peer not allowed", 20, NULL, 0);
        return;
    }
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += CLIENT_DEADLINE_MS / 1000;
    deadline.tv_nsec += (CLIENT_DEADLINE_MS % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    got = read_request(fd, req, &deadline);
    req[got] = '\0';
    req[strcspn(req, "\n")] = '\0';
    if (!got)
        return;
    if (entra_arc_key_read(helper_key_dir, req, key, sizeof(key), &klen, &why) == 0)
        reply(fd, "OK ", 3, key, klen);
    else
        reply(fd, "ERR ", 4, why, strlen(why));
    OPENSSL_cleanse(key, sizeof(key));
}

/* Drops every descriptor inherited from the parent (listening sockets, logs, the scoreboard)
 * except stdio and the helper's own socket. */
static void close_inherited(int keep)
{
    int fd;
    if (keep > 3)
        close_range(3, (unsigned)keep - 1, 0);
    if (close_range((unsigned)keep + 1, ~0U, 0) != 0)
        for (fd = keep + 1; fd < 65536; fd++)
            close(fd);
}

static void helper_main(int lfd, pid_t parent)
{
    /* Die with the parent: PDEATHSIG for a parent that is killed, and the parent check for
     * the window before prctl and for a parent that exits while we sit in poll. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(0);
    close_inherited(lfd);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGWINCH, SIG_IGN);
    for (;;) {
        struct pollfd pf = {lfd, POLLIN, 0};
        int fd, n = poll(&pf, 1, PARENT_CHECK_MS);
        if (getppid() != parent)
            _exit(0);
        if (n <= 0)
            continue;
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
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
    pid_t parent;
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

    parent = getpid();
    rv = apr_proc_fork(proc, pconf);
    if (rv == APR_INCHILD) {
        helper_main(lfd, parent);
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

/* `baton` is the child's cancel flag (or NULL): the wait for the helper's answer ends at
 * CLIENT_WAIT_MS, or within 100 ms of the child beginning to stop. */
const char *entra_arc_read_key(void *baton, apr_pool_t *p, const char *path, const char **why)
{
    const volatile int *cancel = baton;
    struct sockaddr_un sa;
    char buf[ENTRA_ARC_KEY_MAX + 16];
    size_t got = 0;
    int fd, waited = 0;
    const char *out = NULL;

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
    if (send(fd, path, strlen(path), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 ||
        send(fd, "\n", 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        close(fd);
        *why = "cannot ask the Arc helper";
        return NULL;
    }
    while (got < sizeof(buf) - 1 && waited < CLIENT_WAIT_MS && !(cancel && __atomic_load_n(cancel, __ATOMIC_ACQUIRE))) {
        struct pollfd pf = {fd, POLLIN, 0};
        ssize_t r;
        int n = poll(&pf, 1, 100);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0) {
            waited += 100;
            continue;
        }
        r = recv(fd, buf + got, sizeof(buf) - 1 - got, MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    if (got > 3 && !strncmp(buf, "OK ", 3))
        out = apr_pstrmemdup(p, buf + 3, got - 3);
    else
        *why = got > 4 && !strncmp(buf, "ERR ", 4) ? apr_pstrdup(p, buf + 4)
                                                    : "no answer from the Arc helper";
    OPENSSL_cleanse(buf, sizeof(buf));
    return out;
}
