#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>

#include "entra_arc.h"

const char *entra_arc_key_dir_check(const char *dir)
{
    size_t dl = dir ? strlen(dir) : 0;
    if (!dl)
        return "no Arc key directory configured";
    if (dir[0] != '/' || dl < 2 || dir[dl - 1] == '/' || strstr(dir, ".."))
        return "the Arc key directory must be an absolute path without a trailing slash";
    return NULL;
}

const char *entra_arc_key_path_check(const char *dir, const char *path)
{
    const char *why;
    size_t dl, n;

    if ((why = entra_arc_key_dir_check(dir)))
        return why;
    if (!path)
        return "no Arc key path";
    dl = strlen(dir);
    n = strlen(path);
    if (n <= dl + 5 || strncmp(path, dir, dl) != 0 || path[dl] != '/' ||
        strchr(path + dl + 1, '/') || strcmp(path + n - 4, ".key") != 0 || strstr(path, ".."))
        return "Arc key path is outside the Arc token directory";
    return NULL;
}

int entra_arc_key_read(const char *dir, const char *path, char *buf, size_t cap, size_t *len,
                       const char **why)
{
    struct stat st;
    size_t got = 0;
    ssize_t r;
    int fd;

    *len = 0;
    if (cap < ENTRA_ARC_KEY_MAX + 1) {
        *why = "buffer too small for an Arc key";
        return -1;
    }
    if ((*why = entra_arc_key_path_check(dir, path)))
        return -1;
    /* No stat before the open: what we check is what we opened. */
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        *why = errno == ELOOP ? "Arc key file is a symbolic link" : "cannot open the Arc key file";
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *why = "Arc key file is not a regular file";
        return -1;
    }
    if (st.st_size <= 0 || st.st_size > ENTRA_ARC_KEY_MAX) {
        close(fd);
        *why = "Arc key file size is not in 1..4096 bytes";
        return -1;
    }
    /* One byte more than allowed tells a file that grew since fstat. */
    while (got < ENTRA_ARC_KEY_MAX + 1 &&
           (r = read(fd, buf + got, ENTRA_ARC_KEY_MAX + 1 - got)) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    if (got > ENTRA_ARC_KEY_MAX) {
        *why = "Arc key file size is not in 1..4096 bytes";
        goto fail;
    }
    while (got && (buf[got - 1] == '\n' || buf[got - 1] == '\r' || buf[got - 1] == ' '))
        got--;
    if (!got) {
        *why = "cannot read the Arc key file";
        goto fail;
    }
    for (r = 0; (size_t)r < got; r++)
        if ((unsigned char)buf[r] < 0x20 || buf[r] == 0x7f) {
            *why = "Arc key file holds control characters";
            goto fail;
        }
    buf[got] = '\0';
    *len = got;
    return 0;
fail:
    OPENSSL_cleanse(buf, cap);
    return -1;
}
