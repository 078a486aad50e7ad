/* A scratch folder per test, and shell commands run inside it: the helpers
 * that the driver tests share.  Define SCRATCH_PREFIX ("imgfs-qcow2w")
 * before including; every test of a suite using scratch_make/scratch_remove
 * as .init/.fini gets a fresh folder under /tmp. */
#ifndef IMGFS_TEST_SCRATCH_H
#define IMGFS_TEST_SCRATCH_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/img.h"

static char dir[PATH_MAX];

static inline void scratch_make(void)
{
    snprintf(dir, sizeof(dir), "/tmp/" SCRATCH_PREFIX "-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static inline void scratch_remove(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* Exit status of a shell command run in the scratch folder, quietly. */
static inline int sh_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int sh_status(const char *fmt, ...)
{
    char body[4096], cmd[8192 + PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "cd '%s' && (%s) >/dev/null 2>&1", dir, body);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

#define sh(...) cr_assert_eq(sh_status(__VA_ARGS__), 0, "command failed")

/* Path of `name` in the scratch folder (four live at once). */
static inline const char *in_dir(const char *name)
{
    static char paths[4][2 * PATH_MAX];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof(paths[0]), "%s/%s", dir, name);
    return p;
}

/* The whole file, malloc'd. */
static inline uint8_t *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "cannot open %s", path);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    cr_assert_not_null(buf);
    size_t done = 0;
    while (done < (size_t)st.st_size) {
        ssize_t n = pread(fd, buf + done, (size_t)st.st_size - done, (off_t)done);
        cr_assert_gt(n, 0);
        done += (size_t)n;
    }
    close(fd);
    *len = done;
    return buf;
}

/* Open `name` of the scratch folder with the given driver, or fail the test. */
static inline struct img *scratch_open(const char *name, const char *format, bool rw)
{
    struct img_open_opts o = { .format = format, .read_write = rw };
    struct img *img;
    char err[IMG_ERRMSG_MAX] = "";
    int r = img_open(in_dir(name), &o, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open %s: %s", name, err);
    return img;
}

/* A driver call that must succeed; its message says why not. */
static inline void must(struct img *img, int r, const char *what)
{
    cr_assert_eq(r, 0, "%s: %s", what, img->errmsg);
}

/* qemu-img check exits 0: no corruption and no leak. */
static inline void qemu_check_clean(const char *name)
{
    int rc = sh_status("qemu-img check '%s'", name);
    if (rc != 0)
        sh_status("qemu-img check '%s' >&2", name);
    cr_assert_eq(rc, 0, "qemu-img check %s exits %d", name, rc);
}

#endif
