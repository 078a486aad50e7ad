/* The data path: open/release of image files, read through the chain's map
 * (spliced straight from host files where the bytes lie plainly), and
 * SEEK_DATA/SEEK_HOLE from the same map. */
#include "imgfs.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#define ZERO_BUF_SIZE (1u << 20)

/* Every hole of every read points here; never written. */
static const char zero_buf[ZERO_BUF_SIZE];

/* A file handle is the chain of the file version it opened, shared by all
 * handles of that version: nothing per handle needs allocating. */
static struct chain *chain_of(const struct fuse_file_info *fi)
{
    return (struct chain *)(uintptr_t)fi->fh;
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
    struct chain *c;
    bool keep = false;
    int r = node_open(n, &c, &keep);
    if (r < 0) {
        fuse_reply_err(req, -r);
        return;
    }
    fi->fh = (uintptr_t)c;
    fi->keep_cache = keep;
    /* Reads never change: let the kernel cache and read ahead freely. */
    fi->noflush = 1;
    if (fuse_reply_open(req, fi) == -ENOENT) {
        /* The open was interrupted: no release will come for it. */
        chain_release(c);
    }
}

void io_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    chain_release(chain_of(fi));
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

/* ---- sending host bytes ---- */

/* libfuse splices fd buffers and sends whatever it got: a host read error
 * or a file cut short midway would go out as a short reply, which the
 * kernel takes for the end of the file (the view seems to shrink, its tail
 * reads as nothing).  So the reply is first assembled in a pipe of this
 * thread, where every shortfall shows before anything is sent, and libfuse
 * then moves that pipe on: still no copy of the host bytes. */
struct thread_pipe {
    int fd[2];
    size_t cap;
};

static pthread_key_t pipe_key;
static pthread_once_t pipe_once = PTHREAD_ONCE_INIT;

static void pipe_free(void *p)
{
    struct thread_pipe *tp = p;
    close(tp->fd[0]);
    close(tp->fd[1]);
    free(tp);
}

static void pipe_key_init(void)
{
    pthread_key_create(&pipe_key, pipe_free);
}

/* This thread's pipe, able to hold `need` bytes; NULL when it cannot be
 * had (the pipe size limit), and the caller reads into memory instead. */
static struct thread_pipe *thread_pipe(size_t need)
{
    pthread_once(&pipe_once, pipe_key_init);
    struct thread_pipe *tp = pthread_getspecific(pipe_key);
    if (!tp) {
        if (!(tp = calloc(1, sizeof(*tp))))
            return NULL;
        if (pipe2(tp->fd, O_CLOEXEC | O_NONBLOCK) < 0) {
            free(tp);
            return NULL;
        }
        pthread_setspecific(pipe_key, tp);
    }
    if (tp->cap < need) {
        int got = fcntl(tp->fd[1], F_SETPIPE_SZ, (int)need);
        if (got < 0)
            return NULL;
        tp->cap = (size_t)got;
    }
    return tp;
}

/* A pipe that may still hold bytes is not reused: a new one is cheaper
 * than draining it. */
static void pipe_discard(struct thread_pipe *tp)
{
    pthread_setspecific(pipe_key, NULL);
    pipe_free(tp);
}

/* Reading host bytes for fd buffer `b` failed (err 0: the file ended
 * first).  Say which file, once; the read gets EIO. */
static int host_read_failed(const struct fuse_buf *b, int err)
{
    char link[64], path[PATH_MAX], msg[PATH_MAX + 160];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", b->fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    path[n > 0 ? n : 0] = '\0';
    /* No offset in the message: log_once then says it once per file. */
    if (err)
        snprintf(msg, sizeof(msg), "%s: cannot read image data: %s", n > 0 ? path : "?",
                 strerror(err));
    else
        snprintf(msg, sizeof(msg), "%s: the file ends before the data its map points at "
                 "(changed while mounted?)", n > 0 ? path : "?");
    log_once(msg);
    return -EIO;
}

static int pipe_put_host(struct thread_pipe *tp, const struct fuse_buf *b)
{
    off_t pos = b->pos;
    for (size_t left = b->size; left > 0;) {
        ssize_t n = splice(b->fd, &pos, tp->fd[1], NULL, left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return -EAGAIN;   /* the pipe is full: not the image's fault */
        if (n <= 0)
            return host_read_failed(b, n == 0 ? 0 : errno);
        left -= (size_t)n;
    }
    return 0;
}

static int pipe_put_mem(struct thread_pipe *tp, const struct fuse_buf *b)
{
    const char *p = b->mem;
    for (size_t left = b->size; left > 0;) {
        ssize_t n = write(tp->fd[1], p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -EAGAIN;   /* the pipe is full: not the image's fault */
        p += n;
        left -= (size_t)n;
    }
    return 0;
}

/* Room for `total` bytes in `nbufs` pieces: a host range that starts or
 * ends inside a page takes a pipe slot of its own for that page. */
static size_t pipe_need(size_t total, size_t nbufs)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return total + (2 * nbufs + 1) * page;
}

/* Send the reply through this thread's pipe; 1 = no pipe to be had, or
 * one too small (unprivileged, the pipe size limit is 1 MiB: libfuse then
 * copies too). */
static int reply_by_pipe(fuse_req_t req, const struct reply *rp, size_t total)
{
    struct thread_pipe *tp = thread_pipe(pipe_need(total, rp->v->count));
    if (!tp)
        return 1;
    int r = 0;
    for (size_t i = 0; r == 0 && i < rp->v->count; i++) {
        const struct fuse_buf *b = &rp->v->buf[i];
        r = (b->flags & FUSE_BUF_IS_FD) ? pipe_put_host(tp, b) : pipe_put_mem(tp, b);
    }
    if (r < 0) {
        pipe_discard(tp);
        if (r == -EAGAIN)
            return 1;   /* more pieces than the pipe holds: copy instead */
        fuse_reply_err(req, -r);
        return 0;
    }
    struct fuse_bufvec pv = FUSE_BUFVEC_INIT(total);
    pv.buf[0].flags = FUSE_BUF_IS_FD;
    pv.buf[0].fd = tp->fd[0];
    fuse_reply_data(req, &pv, FUSE_BUF_SPLICE_MOVE);
    int left = 0;
    if (ioctl(tp->fd[0], FIONREAD, &left) < 0 || left > 0)
        pipe_discard(tp);   /* the reply did not go out whole (interrupted) */
    return 0;
}

/* Without a pipe: read the host bytes into memory, every one accounted. */
static void reply_by_copy(fuse_req_t req, const struct reply *rp, size_t total)
{
    char *out = malloc(total ? total : 1), *p = out;
    int r = out ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < rp->v->count; i++) {
        const struct fuse_buf *b = &rp->v->buf[i];
        if (!(b->flags & FUSE_BUF_IS_FD)) {
            memcpy(p, b->mem, b->size);
        } else {
            for (size_t done = 0; r == 0 && done < b->size;) {
                ssize_t n = pread(b->fd, p + done, b->size - done, b->pos + (off_t)done);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    r = host_read_failed(b, n == 0 ? 0 : errno);
                else
                    done += (size_t)n;
            }
        }
        p += b->size;
    }
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_buf(req, out, total);
    free(out);
}

static void send_reply(fuse_req_t req, const struct reply *rp)
{
    size_t total = 0;
    bool host = false;
    for (size_t i = 0; i < rp->v->count; i++) {
        total += rp->v->buf[i].size;
        host |= (rp->v->buf[i].flags & FUSE_BUF_IS_FD) != 0;
    }
    /* Zeros and decoded bytes cannot fall short: straight out. */
    if (!host)
        fuse_reply_data(req, rp->v, FUSE_BUF_SPLICE_MOVE);
    else if (reply_by_pipe(req, rp, total) == 1)
        reply_by_copy(req, rp, total);
}

void io_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
             struct fuse_file_info *fi)
{
    (void)ino;
    struct img *img = chain_of(fi)->img;
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
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        send_reply(req, &rp);
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
    struct img *img = chain_of(fi)->img;
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
