/* Azure Arc challenge key files: the one place that decides which path may be read and how
 * it is read safely. Used by the credential source (entra_cred.c), httpd's privileged
 * helper (mod_entra_arc.c) and the Lua module. */
#ifndef ENTRA_ARC_H
#define ENTRA_ARC_H

#include <stddef.h>

#define ENTRA_ARC_KEY_MAX 4096

/* NULL when `dir` is usable as the key directory: absolute, without a trailing slash or "..".
 * Otherwise a reason. */
const char *entra_arc_key_dir_check(const char *dir);

/* NULL when `path` names a `.key` file directly inside `dir` (an absolute directory without
 * a trailing slash): no further '/', no "..", at least one character before ".key".
 * Otherwise a reason. Looks at the strings only. */
const char *entra_arc_key_path_check(const char *dir, const char *path);

/* Reads a key file that passes entra_arc_key_path_check into `buf` (`cap` >=
 * ENTRA_ARC_KEY_MAX + 1): opened with O_NOFOLLOW | O_NONBLOCK (a symlink is refused, a FIFO
 * cannot stall the reader), a regular file by fstat of 1..4096 bytes, no control
 * characters; trailing newlines and spaces are dropped and the result is NUL-terminated.
 * Returns 0 with *len set, or -1 with *why set and `buf` wiped. */
int entra_arc_key_read(const char *dir, const char *path, char *buf, size_t cap, size_t *len,
                       const char **why);

#endif
