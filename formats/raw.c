/* raw: the file is the disk.  Its map comes from the host file system's own
 * SEEK_DATA / SEEK_HOLE, so a sparse raw file stays sparse through imgfs. */
#include "core/format.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/parse.h"

#define RAW_BLKSIZE 65536

/* Anything can be raw, so raw only wins when nothing else claims the file. */
static int raw_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)head; (void)len; (void)filename;
    return 1;
}

/* The last run that SEEK_DATA / SEEK_HOLE found.  On tmpfs SEEK_HOLE walks
 * every page up to the hole, so asking again for each 1 MiB read of a large
 * allocated run would make a sequential read quadratic. */
struct raw_state {
    pthread_mutex_t lock;
    bool valid;
    uint64_t start, end;
    enum img_kind kind;
};

static int raw_open(struct img *img, const struct img_open_opts *o)
{
    (void)o;
    int64_t size = img_fd_size(img->fd);
    if (size < 0)
        return img_error(img, (int)-size, "cannot get the size: %s", strerror((int)-size));
    struct raw_state *s = calloc(1, sizeof(*s));
    if (!s)
        return img_error(img, ENOMEM, "out of memory");
    pthread_mutex_init(&s->lock, NULL);
    img->priv = s;
    img->size = (uint64_t)size;
    img->cluster_size = RAW_BLKSIZE;
    return 0;
}

static void raw_close(struct img *img)
{
    struct raw_state *s = img->priv;
    pthread_mutex_destroy(&s->lock);
    free(s);
    img->priv = NULL;
}

static void forget_run(struct img *img)
{
    struct raw_state *s = img->priv;
    pthread_mutex_lock(&s->lock);
    s->valid = false;
    pthread_mutex_unlock(&s->lock);
}

/* The whole run of data or hole that contains `off`, asked of the host. */
static void find_run(struct img *img, uint64_t off, struct raw_state *run)
{
    run->start = off;
    run->end = img->size;
    off_t data = lseek(img->fd, (off_t)off, SEEK_DATA);
    if (data < 0 && errno != ENXIO) {
        run->kind = IMG_DATA;   /* no SEEK_DATA here (or a device): all data */
        return;
    }
    if (data < 0) {
        /* No data after `off`: a trailing hole, or the file shrank since it
         * was opened.  Bytes past its end now are missing, not zeros: they
         * map as data, and reading them fails. */
        int64_t host = img_fd_size(img->fd);
        if (host >= 0 && off >= (uint64_t)host) {
            run->kind = IMG_DATA;
            return;
        }
        if (host >= 0 && (uint64_t)host < run->end)
            run->end = (uint64_t)host;
    }
    if (data < 0 || (uint64_t)data > off) {
        run->kind = IMG_ZERO;
        if (data >= 0 && (uint64_t)data < run->end)
            run->end = (uint64_t)data;
        return;
    }
    run->kind = IMG_DATA;
    off_t hole = lseek(img->fd, (off_t)off, SEEK_HOLE);
    if (hole > (off_t)off && (uint64_t)hole < run->end)
        run->end = (uint64_t)hole;
}

static int raw_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    struct raw_state *s = img->priv, run;
    pthread_mutex_lock(&s->lock);
    bool hit = s->valid && s->start <= off && off < s->end;
    run = *s;
    pthread_mutex_unlock(&s->lock);
    if (!hit) {
        find_run(img, off, &run);
        pthread_mutex_lock(&s->lock);
        s->valid = true;
        s->start = run.start;
        s->end = run.end;
        s->kind = run.kind;
        pthread_mutex_unlock(&s->lock);
    }
    ext->off = off;
    ext->kind = run.kind;
    ext->len = run.end - off < len ? run.end - off : len;
    if (run.kind == IMG_DATA) {
        ext->fd = img->fd;
        ext->host_off = off;
    }
    return 0;
}

/* ---- write side ---- */

#define RAW_ZERO_BUF (1u << 20)

enum raw_prealloc { PREALLOC_OFF, PREALLOC_FALLOC, PREALLOC_FULL };

static int create_error(char *err, size_t errlen, int r, const char *fmt, const char *arg)
{
    snprintf(err, errlen, fmt, arg);
    return -r;
}

static int parse_create_opts(const struct img_create_opts *o, enum raw_prealloc *pre,
                             char *err, size_t errlen)
{
    *pre = PREALLOC_OFF;
    if (o->backing_file)
        return create_error(err, errlen, ENOTSUP, "%s", "raw images have no backing file");
    for (size_t i = 0; i < o->n_opts; i++) {
        const char *k = o->opts[i].key, *v = o->opts[i].value;
        if (strcmp(k, "size") == 0)
            continue;   /* the caller folded it into o->size */
        /* Placement hints of the host file (img_file_create_options): the
         * image reads the same without them, so they are accepted and left. */
        if (strcmp(k, "nocow") == 0 || strcmp(k, "extent_size_hint") == 0)
            continue;
        if (strcmp(k, "preallocation") != 0)
            return create_error(err, errlen, EINVAL, "Invalid parameter '%s'", k);
        if (strcmp(v, "off") == 0)
            *pre = PREALLOC_OFF;
        else if (strcmp(v, "falloc") == 0)
            *pre = PREALLOC_FALLOC;
        else if (strcmp(v, "full") == 0)
            *pre = PREALLOC_FULL;
        else
            return create_error(err, errlen, EINVAL, "Invalid preallocation mode: '%s'", v);
    }
    return 0;
}

/* Write zeros with plain writes: the fallback where the file system cannot
 * allocate or punch, and preallocation=full. */
static int write_zero_bytes(int fd, uint64_t off, uint64_t len)
{
    char *zeros = calloc(1, RAW_ZERO_BUF);
    if (!zeros)
        return -ENOMEM;
    int r = 0;
    while (len > 0 && r == 0) {
        size_t n = len < RAW_ZERO_BUF ? (size_t)len : RAW_ZERO_BUF;
        ssize_t w = pwrite(fd, zeros, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            r = w < 0 ? -errno : -EIO;
        else {
            off += (uint64_t)w;
            len -= (uint64_t)w;
        }
    }
    free(zeros);
    return r;
}

static int preallocate(int fd, enum raw_prealloc pre, uint64_t size)
{
    if (pre == PREALLOC_FULL)
        return write_zero_bytes(fd, 0, size);
    if (pre == PREALLOC_FALLOC && size > 0) {
        int r = posix_fallocate(fd, 0, (off_t)size);
        return -r;
    }
    return 0;
}

static int raw_create(const char *path, const struct img_create_opts *o,
                      char *err, size_t errlen)
{
    enum raw_prealloc pre;
    int r = parse_create_opts(o, &pre, err, errlen);
    if (r < 0)
        return r;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "Could not create '%s': %s", path, strerror(e));
        return -e;
    }
    r = ftruncate(fd, (off_t)o->size) < 0 ? -errno : 0;
    if (r == 0)
        r = preallocate(fd, pre, o->size);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    close(fd);
    if (r < 0)
        snprintf(err, errlen, "Could not write '%s': %s", path, strerror(-r));
    return r;
}

static int raw_write(struct img *img, const void *buf, size_t len, uint64_t off)
{
    forget_run(img);
    return img_pwrite(img, img->fd, buf, len, off, "data");
}

/* Zeros as a hole when the caller allows unmapping, as an allocated zero
 * range otherwise; plain zero writes where the file system has neither. */
static int raw_write_zeroes(struct img *img, uint64_t off, uint64_t len, bool may_unmap)
{
    int mode = may_unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE;
    forget_run(img);
    if (fallocate(img->fd, mode, (off_t)off, (off_t)len) == 0)
        return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
        return img_error(img, errno, "zeroing %llu+%llu: %s", (unsigned long long)off,
                         (unsigned long long)len, strerror(errno));
    int r = write_zero_bytes(img->fd, off, len);
    if (r < 0)
        return img_error(img, -r, "zeroing %llu+%llu: %s", (unsigned long long)off,
                         (unsigned long long)len, strerror(-r));
    return 0;
}

static int raw_flush(struct img *img)
{
    return img_sync(img, img->fd, "the image");
}

static int raw_resize(struct img *img, uint64_t new_size, bool shrink)
{
    if (new_size < img->size && !shrink)
        return img_error(img, EINVAL, "Use the --shrink option to perform a shrink operation.");
    forget_run(img);
    if (ftruncate(img->fd, (off_t)new_size) < 0)
        return img_error(img, errno, "resize: %s", strerror(errno));
    img->size = new_size;
    return 0;
}

/* qemu's raw format has no option but the size: preallocation and the other
 * host file options come from img_file_create_options. */
static const struct img_create_option raw_create_options[] = {
    { "size", "size", "Virtual disk size", NULL },
    { NULL, NULL, NULL, NULL },
};

const struct img_format img_format_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .map = raw_map,
    .create = raw_create,
    .create_options = raw_create_options,
    .write = raw_write,
    .write_zeroes = raw_write_zeroes,
    .flush = raw_flush,
    .resize = raw_resize,
};
