/* The data path: open/release of image files, read through the chain's map
 * (spliced straight from host files where the bytes lie plainly), and
 * SEEK_DATA/SEEK_HOLE from the same map. */
#include "imgfs.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#define ZERO_BUF_SIZE (1u << 20)

/* Every hole of every read points here; never written. */
static const char zero_buf[ZERO_BUF_SIZE];

/* A file handle is its node: the open chain is shared by all handles and
 * stays while any is open, so nothing per handle needs allocating. */
static struct node *node_of(const struct fuse_file_info *fi)
{
    return (struct node *)(uintptr_t)fi->fh;
}

void io_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct node *n = tree_get(ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (n->is_dir) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
        fuse_reply_err(req, EROFS);
        return;
    }
    struct img *img;
    bool keep = false;
    int r = node_open(n, &img, &keep);
    if (r < 0) {
        fuse_reply_err(req, -r);
        return;
    }
    fi->fh = (uintptr_t)n;
    fi->keep_cache = keep;
    /* Reads never change: let the kernel cache and read ahead freely. */
    fi->noflush = 1;
    if (fuse_reply_open(req, fi) == -ENOENT) {
        /* The open was interrupted: no release will come for it. */
        node_release(n);
    }
}

void io_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    node_release(node_of(fi));
    fuse_reply_err(req, 0);
}

/* ---- read ---- */

/* The reply under construction: buffers that point at host files, at the
 * zero buffer, or into `arena` (bytes the driver had to decode). */
struct reply {
    struct fuse_bufvec *v;
    size_t cap;
    char *arena;
    size_t arena_len, arena_used;
};

static struct fuse_buf *last_buf(struct reply *rp)
{
    return rp->v->count ? &rp->v->buf[rp->v->count - 1] : NULL;
}

static int push_buf(struct reply *rp, const struct fuse_buf *b)
{
    if (rp->v->count == rp->cap) {
        size_t cap = rp->cap * 2;
        struct fuse_bufvec *v = realloc(rp->v, sizeof(*v) + cap * sizeof(v->buf[0]));
        if (!v)
            return -ENOMEM;
        rp->v = v;
        rp->cap = cap;
    }
    rp->v->buf[rp->v->count++] = *b;
    return 0;
}

/* Host bytes: one fd buffer, merged with the previous one when the host
 * range continues it (fewer splice calls). */
static int push_fd(struct reply *rp, int fd, uint64_t pos, uint64_t len)
{
    struct fuse_buf *l = last_buf(rp);
    if (l && (l->flags & FUSE_BUF_IS_FD) && l->fd == fd && (uint64_t)l->pos + l->size == pos) {
        l->size += len;
        return 0;
    }
    struct fuse_buf b = {
        .size = len, .flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY,
        .fd = fd, .pos = (off_t)pos,
    };
    return push_buf(rp, &b);
}

static int push_mem(struct reply *rp, const char *mem, uint64_t len)
{
    struct fuse_buf *l = last_buf(rp);
    if (l && !(l->flags & FUSE_BUF_IS_FD) && (const char *)l->mem + l->size == mem) {
        l->size += len;
        return 0;
    }
    struct fuse_buf b = { .size = len, .mem = (void *)mem, .fd = -1 };
    return push_buf(rp, &b);
}

/* Zeros, in pieces of at most the zero buffer. */
static int push_zero(struct reply *rp, uint64_t len)
{
    while (len) {
        struct fuse_buf *l = last_buf(rp);
        bool is_zero = l && !(l->flags & FUSE_BUF_IS_FD) && l->mem >= (void *)zero_buf &&
                       l->mem < (void *)(zero_buf + ZERO_BUF_SIZE);
        size_t room = is_zero ? ZERO_BUF_SIZE - l->size : 0;
        size_t chunk = len < room ? len : room;
        if (chunk) {
            l->size += chunk;
        } else {
            chunk = len < ZERO_BUF_SIZE ? len : ZERO_BUF_SIZE;
            struct fuse_buf b = { .size = chunk, .mem = (void *)zero_buf, .fd = -1 };
            if (push_buf(rp, &b) < 0)
                return -ENOMEM;
        }
        len -= chunk;
    }
    return 0;
}

/* Compressed or encrypted data: the driver decodes it into the arena. */
static int push_decoded(struct reply *rp, const struct img_extent *ext)
{
    if (!rp->arena && !(rp->arena = malloc(rp->arena_len)))
        return -ENOMEM;
    if (ext->len > rp->arena_len - rp->arena_used)
        return -EIO;
    char *dst = rp->arena + rp->arena_used;
    int r = img_read_extent(ext, dst);
    if (r < 0)
        return r;
    rp->arena_used += ext->len;
    return push_mem(rp, dst, ext->len);
}

static int push_extent(struct reply *rp, const struct img_extent *ext)
{
    if (ext->kind != IMG_DATA)
        return push_zero(rp, ext->len);
    if (ext->fd >= 0)
        return push_fd(rp, ext->fd, ext->host_off, ext->len);
    return push_decoded(rp, ext);
}

/* Failures of the image itself are logged once, with the file's name.  The
 * message is this thread's own: other threads may be failing on the same
 * image at the same moment. */
static int image_fault(int r)
{
    const char *msg = img_last_error();
    if (msg[0])
        log_once(msg);
    return r == -ENOMEM ? r : -EIO;
}

static int build_reply(struct reply *rp, struct img *img, uint64_t off, uint64_t end)
{
    for (uint64_t pos = off; pos < end;) {
        struct img_extent ext = { 0 };
        int r = img_map(img, pos, end - pos, &ext);
        if (r == 0 && (ext.len == 0 || ext.len > end - pos))
            r = -EIO;
        if (r == 0)
            r = push_extent(rp, &ext);
        if (r < 0)
            return image_fault(r);
        pos += ext.len;
    }
    return 0;
}

/* The host file behind fd buffer `b` is shorter than the map promised: it
 * was truncated or replaced under us.  Say which file, once. */
static int host_file_short(const struct fuse_buf *b, off_t host_size)
{
    char link[64], path[PATH_MAX], msg[PATH_MAX + 160];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", b->fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    path[n > 0 ? n : 0] = '\0';
    /* No offset in the message: log_once then says it once per file. */
    snprintf(msg, sizeof(msg), "%s: host file is %lld bytes, shorter than the data its map "
             "points at (changed while mounted?)", n > 0 ? path : "?", (long long)host_size);
    log_once(msg);
    return -EIO;
}

/* libfuse splices fd buffers and sends what it got: a host file cut short
 * while mounted would become a short reply, which the kernel takes for the
 * end of the file (the view would seem to shrink, its tail read as nothing).
 * Every host range must therefore lie inside its file now; one fstat per
 * distinct file per request is cheap next to the FUSE round trip. */
static int check_host_ranges(const struct reply *rp)
{
    int size_fd = -1;
    off_t host_size = 0;
    for (size_t i = 0; i < rp->v->count; i++) {
        const struct fuse_buf *b = &rp->v->buf[i];
        if (!(b->flags & FUSE_BUF_IS_FD))
            continue;
        if (b->fd != size_fd) {
            struct stat st;
            if (fstat(b->fd, &st) < 0)
                return -EIO;
            size_fd = b->fd;
            host_size = st.st_size;
        }
        if ((uint64_t)b->pos + b->size > (uint64_t)host_size)
            return host_file_short(b, host_size);
    }
    return 0;
}

void io_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
             struct fuse_file_info *fi)
{
    (void)ino;
    struct img *img = node_of(fi)->img;
    if (off < 0 || (uint64_t)off >= img->size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    uint64_t end = (uint64_t)off + size;
    if (end > img->size || end < (uint64_t)off)
        end = img->size;
    struct reply rp = { .cap = 8, .arena_len = end - (uint64_t)off };
    rp.v = calloc(1, sizeof(*rp.v) + rp.cap * sizeof(rp.v->buf[0]));
    if (!rp.v) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int r = build_reply(&rp, img, (uint64_t)off, end);
    if (r == 0)
        r = check_host_ranges(&rp);
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_data(req, rp.v, FUSE_BUF_SPLICE_MOVE);
    free(rp.arena);
    free(rp.v);
}

/* ---- SEEK_DATA / SEEK_HOLE ---- */

/* First offset >= off that is data (want_data) or a hole; img_map merges
 * runs, so this walks extents, not clusters. */
static int64_t seek_in_map(struct img *img, uint64_t off, bool want_data)
{
    uint64_t pos = off;
    while (pos < img->size) {
        struct img_extent ext = { 0 };
        int r = img_map(img, pos, img->size - pos, &ext);
        if (r == 0 && ext.len == 0)
            r = -EIO;
        if (r < 0)
            return image_fault(r);
        if ((ext.kind == IMG_DATA) == want_data)
            return (int64_t)pos;
        pos += ext.len;
    }
    /* Past the last data: no more data; the hole is the virtual EOF. */
    return want_data ? -ENXIO : (int64_t)img->size;
}

void io_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
              struct fuse_file_info *fi)
{
    (void)ino;
    struct img *img = node_of(fi)->img;
    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    if (off < 0 || (uint64_t)off >= img->size) {
        fuse_reply_err(req, ENXIO);
        return;
    }
    int64_t r = seek_in_map(img, (uint64_t)off, whence == SEEK_DATA);
    if (r < 0)
        fuse_reply_err(req, (int)-r);
    else
        fuse_reply_lseek(req, (off_t)r);
}
