/* entra_arc_key_dir_check / entra_arc_key_path_check / entra_arc_key_read: the one place
 * deciding which Arc key file may be read (used by the core, httpd's helper and the Lua
 * module), and reading it without following links or blocking on a FIFO. */
#include "unit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "entra_arc.h"

static char dir[256];

static void test_dir_check(void)
{
    CHECK(entra_arc_key_dir_check("/var/opt/azcmagent/tokens") == NULL);
    CHECK(entra_arc_key_dir_check("/t") == NULL);
    CHECK(entra_arc_key_dir_check(NULL) != NULL);
    CHECK(entra_arc_key_dir_check("") != NULL);
    CHECK(entra_arc_key_dir_check("/") != NULL);
    CHECK(entra_arc_key_dir_check("relative/dir") != NULL);
    CHECK(entra_arc_key_dir_check("/var/opt/azcmagent/tokens/") != NULL);
    CHECK(entra_arc_key_dir_check("/var/opt/../etc") != NULL);
}

static void test_path_check(void)
{
    const char *d = "/var/opt/azcmagent/tokens";
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/abc.key") == NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/a.key") == NULL);
    /* outside, nested, traversal, wrong suffix, prefix-only match, empty name */
    CHECK(entra_arc_key_path_check(d, "/etc/shadow") != NULL);
    CHECK(entra_arc_key_path_check(d, "/etc/x.key") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/sub/a.key") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/../a.key") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/..a.key") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/a.txt") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/a.key.bak") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokensX/a.key") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens/.key") != NULL);
    CHECK(entra_arc_key_path_check(d, "/var/opt/azcmagent/tokens.key") != NULL);
    CHECK(entra_arc_key_path_check(d, "") != NULL);
    CHECK(entra_arc_key_path_check(d, NULL) != NULL);
    CHECK(entra_arc_key_path_check("/var/opt/azcmagent/tokens/", "/var/opt/azcmagent/tokens//a.key") != NULL);
    CHECK(entra_arc_key_path_check(NULL, "/a/b.key") != NULL);
}

static const char *in_dir(const char *name)
{
    return apr_pstrcat(up, dir, "/", name, NULL);
}

static void write_file(const char *name, const char *content, size_t n)
{
    int fd = open(in_dir(name), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK((size_t)write(fd, content, n) == n);
        close(fd);
    }
}

/* Reads `name`; returns its content or NULL with *why. */
static const char *read_key(const char *name, const char **why)
{
    static char buf[ENTRA_ARC_KEY_MAX + 1];
    size_t len = 99;
    *why = NULL;
    if (entra_arc_key_read(dir, in_dir(name), buf, sizeof(buf), &len, why) != 0) {
        CHECK(*why != NULL);
        CHECK_INT_EQ(len, 0);
        return NULL;
    }
    CHECK_INT_EQ(strlen(buf), len);
    return buf;
}

static void test_read(void)
{
    const char *why;
    char big[ENTRA_ARC_KEY_MAX + 2];

    write_file("good.key", "c2VjcmV0\n", 9);
    CHECK_STR_EQ(read_key("good.key", &why), "c2VjcmV0");

    memset(big, 'a', sizeof(big));
    write_file("max.key", big, ENTRA_ARC_KEY_MAX);
    CHECK(read_key("max.key", &why) != NULL);
    write_file("big.key", big, ENTRA_ARC_KEY_MAX + 1);
    CHECK(read_key("big.key", &why) == NULL && unit_contains(why, "size"));

    write_file("empty.key", "", 0);
    CHECK(read_key("empty.key", &why) == NULL);
    write_file("nl.key", "\n\n", 2);
    CHECK(read_key("nl.key", &why) == NULL);
    write_file("ctl.key", "ab\001cd", 5);
    CHECK(read_key("ctl.key", &why) == NULL && unit_contains(why, "control"));

    /* A symbolic link to a good file is refused (O_NOFOLLOW), not followed. */
    CHECK(symlink(in_dir("good.key"), in_dir("link.key")) == 0);
    CHECK(read_key("link.key", &why) == NULL && unit_contains(why, "symbolic link"));

    /* A FIFO with no writer: the open must not block, and it is not a regular file. */
    CHECK(mkfifo(in_dir("fifo.key"), 0600) == 0);
    {
        apr_time_t t0 = apr_time_now();
        CHECK(read_key("fifo.key", &why) == NULL && unit_contains(why, "regular"));
        CHECK(apr_time_now() - t0 < apr_time_from_sec(1));
    }

    /* A directory named like a key. */
    CHECK(mkdir(in_dir("dir.key"), 0700) == 0);
    CHECK(read_key("dir.key", &why) == NULL);

    /* Missing file, and a path outside the directory (even one that exists). */
    CHECK(read_key("missing.key", &why) == NULL);
    {
        char buf[ENTRA_ARC_KEY_MAX + 1];
        size_t len;
        CHECK(entra_arc_key_read(dir, "/etc/hostname", buf, sizeof(buf), &len, &why) != 0);
        CHECK(unit_contains(why, "outside"));
        /* A buffer that cannot hold a full key is refused before anything is opened. */
        CHECK(entra_arc_key_read(dir, in_dir("good.key"), buf, 16, &len, &why) != 0);
    }
}

int main(void)
{
    unit_begin("test_arc");
    snprintf(dir, sizeof(dir), "/tmp/entra-unit-arc-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    RUN(test_dir_check);
    RUN(test_path_check);
    RUN(test_read);
    {
        /* Remove what test_read made. */
        const char *names[] = {"good.key", "max.key", "big.key", "empty.key", "nl.key", "ctl.key",
                               "link.key", "fifo.key", NULL};
        int i;
        for (i = 0; names[i]; i++)
            unlink(in_dir(names[i]));
        rmdir(in_dir("dir.key"));
        rmdir(dir);
    }
    return unit_end();
}
