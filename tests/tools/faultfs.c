/* faultfs: a read-only FUSE mirror of a folder whose reads fail with EIO
 * where told, so that the integration tests can give imgfs a host file with
 * bad sectors (no device-mapper, no root-only block devices needed).
 *
 *   faultfs [FUSE options] [--eio NAME:OFFSET:LENGTH]... SRC MNT
 *
 * NAME is a path below SRC ("disk.qcow2", "vm/disk.vmdk"); OFFSET and LENGTH
 * are bytes of that file (decimal, or 0x hex).  A read that overlaps any of
 * its ranges fails as a whole with EIO, like a disk that cannot read one of
 * the sectors asked for.  Each injected fault is said on stderr
 * ("faultfs: EIO NAME OFF LEN"), so a test can tell that its fault was hit.
 *
 * The kernel page cache stays on (as above a real disk): the kernel asks for
 * whole pages, retries a failed readahead page by page, and never caches a
 * page that failed.  `-o direct_io` sends every read through unchanged. */
#define FUSE_USE_VERSION 314
#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

struct fault {
    const char *name;   /* below SRC, no leading "/" */
    uint64_t off, len;
};

static struct fault *faults;
static size_t n_faults;
static int src_fd = -1;   /* SRC itself: every path is opened relative to it */

/* The high-level API hands us "/a/b"; SRC-relative that is "a/b" ("." for
 * the root). */
static const char *rel(const char *path)
{
    while (*path == '/')
        path++;
    return *path ? path : ".";
}

static bool faulty(const char *path, uint64_t off, uint64_t len)
{
    for (size_t i = 0; i < n_faults; i++) {
        if (strcmp(faults[i].name, rel(path)) == 0 && off < faults[i].off + faults[i].len &&
            faults[i].off < off + len)
            return true;
    }
    return false;
}

static void *ff_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    /* imgfs keys its caches on st_ino: give it the real ones. */
    cfg->use_ino = 1;
    return NULL;
}

static int ff_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    int r = fi ? fstat((int)fi->fh, st) : fstatat(src_fd, rel(path), st, 0);
    if (r < 0)
        return -errno;
    /* Read-only mirror: nobody should think a write could work. */
    st->st_mode &= ~(mode_t)0222;
    return 0;
}

static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off, (void)fi, (void)flags;
    int dfd = openat(src_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return -errno;
    }
    /* Whole listing in one go (offset 0 for every entry): folders are small. */
    for (struct dirent *de; (de = readdir(d));) {
        struct stat st = { .st_ino = de->d_ino, .st_mode = (mode_t)DTTOIF(de->d_type) };
        if (fill(buf, de->d_name, &st, 0, 0))
            break;
    }
    closedir(d);
    return 0;
}

static int ff_open(const char *path, struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) != O_RDONLY)
        return -EROFS;
    int fd = openat(src_fd, rel(path), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int ff_read(const char *path, char *buf, size_t size, off_t off,
                   struct fuse_file_info *fi)
{
    if (faulty(path, (uint64_t)off, size)) {
        fprintf(stderr, "faultfs: EIO %s %jd %zu\n", rel(path), (intmax_t)off, size);
        return -EIO;
    }
    /* A short count only at the end of the file: the kernel takes any
     * short read for EOF. */
    size_t done = 0;
    while (done < size) {
        ssize_t n = pread((int)fi->fh, buf + done, size - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        done += (size_t)n;
    }
    return (int)done;
}

static int ff_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int ff_statfs(const char *path, struct statvfs *sv)
{
    (void)path;
    return fstatvfs(src_fd, sv) < 0 ? -errno : 0;
}

/* imgfs answers SEEK_DATA/SEEK_HOLE of a raw image from its host file. */
static off_t ff_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
    (void)path;
    off_t r = lseek((int)fi->fh, off, whence);
    return r < 0 ? -errno : r;
}

static const struct fuse_operations ff_ops = {
    .init = ff_init,
    .getattr = ff_getattr,
    .readdir = ff_readdir,
    .open = ff_open,
    .read = ff_read,
    .release = ff_release,
    .statfs = ff_statfs,
    .lseek = ff_lseek,
};

static int usage(void)
{
    fprintf(stderr, "usage: faultfs [FUSE options] [--eio NAME:OFFSET:LENGTH]... SRC MNT\n");
    return 2;
}

/* NAME:OFFSET:LENGTH; NAME may hold ':' itself (the last two fields are
 * the numbers). */
static int add_fault(char *spec)
{
    char *c2 = strrchr(spec, ':'), *c1, *end;
    if (!c2 || c2 == spec)
        return -1;
    *c2 = '\0';
    c1 = strrchr(spec, ':');
    if (!c1 || c1 == spec)
        return -1;
    *c1 = '\0';
    struct fault f = { .name = rel(spec) };
    errno = 0;
    f.off = strtoull(c1 + 1, &end, 0);
    if (errno || *end || end == c1 + 1)
        return -1;
    f.len = strtoull(c2 + 1, &end, 0);
    if (errno || *end || end == c2 + 1 || f.len == 0 || f.off + f.len < f.off)
        return -1;
    struct fault *nf = realloc(faults, (n_faults + 1) * sizeof(*nf));
    if (!nf)
        return -1;
    faults = nf;
    faults[n_faults++] = f;
    return 0;
}

int main(int argc, char **argv)
{
    /* Take out --eio and SRC; the rest (options, MNT) is libfuse's, after
     * our own two arguments. */
    char **fargv = calloc((size_t)argc + 3, sizeof(*fargv));
    const char *src = NULL;
    int fargc = 0;
    if (!fargv)
        return 1;
    fargv[fargc++] = argv[0];
    /* First, so that the caller's -o may override them.  (libfuse 3.14's
     * fuse_main complains about its own idle-thread default otherwise.) */
    fargv[fargc++] = "-o";
    fargv[fargc++] = "ro,fsname=faultfs,max_idle_threads=10";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--eio") == 0) {
            if (i + 1 >= argc || add_fault(argv[++i]) < 0) {
                fprintf(stderr, "faultfs: bad --eio %s (want NAME:OFFSET:LENGTH)\n",
                        i < argc ? argv[i] : "");
                return usage();
            }
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            fargv[fargc++] = argv[i++];
            fargv[fargc++] = argv[i];
        } else if (argv[i][0] == '-' || src) {
            fargv[fargc++] = argv[i];
        } else {
            src = argv[i];
        }
    }
    if (!src)
        return usage();
    /* Opened before fuse_main, which may daemonize and leave the folder. */
    src_fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (src_fd < 0) {
        fprintf(stderr, "faultfs: %s: %s\n", src, strerror(errno));
        return 1;
    }
    int r = fuse_main(fargc, fargv, &ff_ops, NULL);
    close(src_fd);
    free(faults);
    free(fargv);
    return r;
}
