/* convert: the map of the source chains decides what is copied.
 *
 * The destination's virtual space is walked in windows of a few MiB.  For
 * each window the sources' map (and, with -B, the new backing's map) is cut
 * into segments; the window is then judged in granules (the destination
 * cluster, or 512 bytes for a plain file): a granule that holds no data and
 * no difference is skipped, data is read once and, only there, scanned for
 * zero runs (-S).  The resulting writes go to worker threads while the main
 * thread reads the next window, so reading and writing overlap, and with -c
 * several clusters are compressed at once. */
#include "convert.h"
#include "format.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_THREADS 8

/* Granule flags. */
#define G_SRC_DATA 0x1   /* the source has DATA somewhere in the granule */
#define G_BK_DATA 0x2    /* the new backing has DATA somewhere in it */
#define G_DIFFERS 0x4    /* a part may differ from what dst reads unwritten */

enum granule_state { ST_SKIP, ST_WRITE, ST_ZERO, ST_ZERO_CANDIDATE, ST_MUST_ZERO };

/* A piece of a window with one answer from the source (and the backing). */
struct seg {
    uint64_t off, len;        /* destination range */
    struct img_extent src;    /* source answer clipped to the segment */
    bool src_data, bk_data;
    bool same;                /* the backing holds the very same bytes */
};

struct op {
    uint64_t off;
    uint64_t len;
    bool zero;                /* write_zeroes instead of write */
    const uint8_t *buf;
};

enum window_state { WIN_FREE, WIN_FILLING, WIN_BUSY };

struct window {
    enum window_state state;
    uint64_t seq;             /* order of filling: workers take the oldest */
    uint8_t *buf, *bbuf;      /* source bytes, backing bytes */
    struct op *ops;
    size_t n_ops, cap_ops, next_op, pending;
};

struct convert {
    const struct img_convert_opts *o;
    struct img_convert_error *err;
    uint64_t total;
    uint64_t *src_start;      /* n_srcs + 1 boundaries in dst space */
    uint64_t window_size;
    uint32_t g;               /* granule */
    struct seg *segs;
    size_t n_segs, cap_segs;
    uint8_t *gflags, *gstate;
    uint8_t *zeros;           /* for write_zeroes-less drivers */

    pthread_mutex_t lock;
    pthread_cond_t work_cond, free_cond;
    struct window *windows;
    unsigned n_windows;
    uint64_t next_seq;
    bool stop, failed;
    int fail_code;            /* negative errno of the first failure */
    pthread_t workers[MAX_THREADS];
    unsigned n_workers;
};

/* ---- small shared helpers ---- */

bool img_buf_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    /* Check a short head by hand, then compare the buffer with itself
     * shifted: memcmp is vectorised, a byte loop is not. */
    size_t head = len < 16 ? len : 16;
    for (size_t i = 0; i < head; i++)
        if (p[i])
            return false;
    return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

static bool same_file(int a, int b)
{
    struct stat sa, sb;
    if (a == b)
        return true;
    if (fstat(a, &sa) < 0 || fstat(b, &sb) < 0)
        return false;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

bool img_extents_same_bytes(const struct img_extent *a, const struct img_extent *b)
{
    return a->kind == IMG_DATA && b->kind == IMG_DATA && a->off == b->off &&
           a->layer && b->layer && same_file(a->layer->fd, b->layer->fd);
}

void img_extent_clip(struct img_extent *ext, uint64_t off, uint64_t len)
{
    uint64_t skip = off - ext->off;
    if (ext->fd >= 0)
        ext->host_off += skip;
    ext->off = off;
    ext->len = len;
}

int img_map_padded(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    if (off >= img->size) {
        *ext = (struct img_extent){ .off = off, .len = len, .kind = IMG_UNALLOCATED,
                                    .fd = -1, .layer = img };
        return 0;
    }
    return img_map(img, off, len < img->size - off ? len : img->size - off, ext);
}

int img_read_padded(struct img *img, void *buf, size_t len, uint64_t off)
{
    size_t inside = 0;
    if (off < img->size)
        inside = len < img->size - off ? len : (size_t)(img->size - off);
    if (inside < len)
        memset((uint8_t *)buf + inside, 0, len - inside);
    return inside ? img_read(img, buf, inside, off) : 0;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* ---- errors ---- */

/* Record the first failure only: later ones are usually its echo. */
static void record_error(struct convert *cx, bool writing, uint64_t off, const char *msg, int r)
{
    pthread_mutex_lock(&cx->lock);
    if (!cx->failed) {
        cx->failed = true;
        cx->fail_code = r < 0 ? r : -EIO;
        cx->err->writing = writing;
        cx->err->offset = off;
        snprintf(cx->err->msg, sizeof(cx->err->msg), "%s", msg && msg[0] ? msg : strerror(-r));
    }
    pthread_cond_broadcast(&cx->free_cond);
    pthread_mutex_unlock(&cx->lock);
}

/* ---- planning one window ---- */

static size_t source_at(const struct convert *cx, uint64_t off)
{
    size_t s = 0;
    while (off >= cx->src_start[s + 1])
        s++;
    return s;
}

static int push_seg(struct convert *cx, const struct seg *sg)
{
    if (cx->n_segs == cx->cap_segs) {
        size_t cap = cx->cap_segs ? 2 * cx->cap_segs : 256;
        struct seg *p = realloc(cx->segs, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        cx->segs = p;
        cx->cap_segs = cap;
    }
    cx->segs[cx->n_segs++] = *sg;
    return 0;
}

/* Ask the backing what it holds under a source segment; may shorten it. */
static int look_at_backing(struct convert *cx, struct seg *sg, uint64_t src_off)
{
    struct img *bk = cx->o->dst->backing;
    struct img_extent b;
    int r = img_map_padded(bk, sg->off, sg->len, &b);
    if (r < 0) {
        record_error(cx, false, sg->off, bk->errmsg, r);
        return r;
    }
    sg->len = min_u64(sg->len, b.len);
    sg->bk_data = b.kind == IMG_DATA;
    /* Same bytes only when the guest offsets agree too (a second source
     * starts elsewhere than the backing's 0). */
    sg->same = src_off == sg->off && img_extents_same_bytes(&sg->src, &b);
    return 0;
}

static int collect_segments(struct convert *cx, uint64_t w, uint64_t n)
{
    uint64_t off = w, end = w + n;
    cx->n_segs = 0;
    while (off < end) {
        size_t s = source_at(cx, off);
        struct img *src = cx->o->srcs[s];
        uint64_t src_off = off - cx->src_start[s];
        struct seg sg = { .off = off };
        int r = img_map(src, src_off, min_u64(end, cx->src_start[s + 1]) - off, &sg.src);
        if (r < 0) {
            record_error(cx, false, off, src->errmsg, r);
            return r;
        }
        sg.len = sg.src.len;
        sg.src_data = sg.src.kind == IMG_DATA;
        if (cx->o->compare_backing && (r = look_at_backing(cx, &sg, src_off)) < 0)
            return r;
        img_extent_clip(&sg.src, src_off, sg.len);
        if ((r = push_seg(cx, &sg)) < 0) {
            record_error(cx, false, off, "out of memory", r);
            return r;
        }
        off += sg.len;
    }
    return 0;
}

static void mark_granules(struct convert *cx, uint64_t w, uint64_t n)
{
    size_t n_gran = (n + cx->g - 1) / cx->g;
    memset(cx->gflags, 0, n_gran);
    for (size_t i = 0; i < cx->n_segs; i++) {
        const struct seg *sg = &cx->segs[i];
        uint8_t f = (sg->src_data ? G_SRC_DATA : 0) | (sg->bk_data ? G_BK_DATA : 0);
        /* An existing destination (-n) holds unknown bytes: everything
         * differs from it. */
        if (!sg->same && (sg->src_data || sg->bk_data || !cx->o->dst_is_new))
            f |= G_DIFFERS;
        size_t first = (sg->off - w) / cx->g, last = (sg->off + sg->len - 1 - w) / cx->g;
        for (size_t gi = first; gi <= last; gi++)
            cx->gflags[gi] |= f;
    }
}

/* Source bytes are needed where a granule may differ and either side has
 * data: to write them, or to compare them with the backing. */
static bool needs_source(uint8_t f)
{
    return (f & G_DIFFERS) && (f & (G_SRC_DATA | G_BK_DATA));
}

static int fill_part(struct convert *cx, const struct seg *sg, uint8_t *dst, uint64_t off,
                     uint64_t len)
{
    if (!sg->src_data) {
        memset(dst, 0, len);
        return 0;
    }
    struct img_extent e = sg->src;
    img_extent_clip(&e, e.off + (off - sg->off), len);
    int r = img_read_extent(&e, dst);
    if (r < 0)
        record_error(cx, false, off, e.layer ? e.layer->errmsg : NULL, r);
    return r;
}

/* Read each segment where its granules need source bytes. */
static int read_sources(struct convert *cx, struct window *win, uint64_t w)
{
    for (size_t i = 0; i < cx->n_segs; i++) {
        const struct seg *sg = &cx->segs[i];
        uint64_t a = sg->off, end = sg->off + sg->len;
        while (a < end) {
            size_t gi = (a - w) / cx->g;
            bool need = needs_source(cx->gflags[gi]);
            uint64_t b = min_u64(w + (gi + 1) * (uint64_t)cx->g, end);
            while (b < end && needs_source(cx->gflags[(b - w) / cx->g]) == need)
                b = min_u64(b + cx->g, end);
            if (need) {
                int r = fill_part(cx, sg, win->buf + (a - w), a, b - a);
                if (r < 0)
                    return r;
            }
            a = b;
        }
    }
    return 0;
}

static uint64_t granule_len(const struct convert *cx, uint64_t n, size_t gi)
{
    return min_u64(cx->g, n - gi * (uint64_t)cx->g);
}

/* Read the backing under every granule that will be compared with it. */
static int read_backing(struct convert *cx, struct window *win, uint64_t w, uint64_t n)
{
    size_t n_gran = (n + cx->g - 1) / cx->g;
    for (size_t gi = 0; gi < n_gran;) {
        if (!(cx->gflags[gi] & G_DIFFERS) || !(cx->gflags[gi] & G_BK_DATA)) {
            gi++;
            continue;
        }
        size_t gj = gi;
        while (gj < n_gran && (cx->gflags[gj] & G_DIFFERS) && (cx->gflags[gj] & G_BK_DATA))
            gj++;
        uint64_t off = gi * (uint64_t)cx->g;
        uint64_t len = min_u64(gj * (uint64_t)cx->g, n) - off;
        int r = img_read_padded(cx->o->dst->backing, win->bbuf + off, len, w + off);
        if (r < 0) {
            record_error(cx, false, w + off, cx->o->dst->backing->errmsg, r);
            return r;
        }
        gi = gj;
    }
    return 0;
}

static enum granule_state judge_granule(const struct convert *cx, const struct window *win,
                                        uint8_t f, uint64_t off, uint64_t len)
{
    const uint8_t *s = win->buf + off;
    if (!(f & G_DIFFERS))
        return ST_SKIP;
    if (f & G_BK_DATA) {
        if (memcmp(s, win->bbuf + off, len) == 0)
            return ST_SKIP;
        return img_buf_is_zero(s, len) ? ST_MUST_ZERO : ST_WRITE;
    }
    if (!(f & G_SRC_DATA))
        return ST_ZERO;
    if (cx->o->sparse_size && img_buf_is_zero(s, len))
        return ST_ZERO_CANDIDATE;
    return ST_WRITE;
}

/* Zeros found inside data become a hole only in runs of at least -S. */
static void settle_zero_runs(struct convert *cx, size_t n_gran, uint64_t n)
{
    for (size_t gi = 0; gi < n_gran;) {
        if (cx->gstate[gi] != ST_ZERO_CANDIDATE) {
            gi++;
            continue;
        }
        size_t gj = gi;
        uint64_t run = 0;
        while (gj < n_gran && cx->gstate[gj] == ST_ZERO_CANDIDATE)
            run += granule_len(cx, n, gj++);
        uint8_t st = run >= cx->o->sparse_size ? ST_ZERO : ST_WRITE;
        memset(cx->gstate + gi, st, gj - gi);
        gi = gj;
    }
}

static void judge_window(struct convert *cx, const struct window *win, uint64_t n)
{
    size_t n_gran = (n + cx->g - 1) / cx->g;
    for (size_t gi = 0; gi < n_gran; gi++) {
        uint64_t off = gi * (uint64_t)cx->g;
        cx->gstate[gi] = judge_granule(cx, win, cx->gflags[gi], off, granule_len(cx, n, gi));
    }
    settle_zero_runs(cx, n_gran, n);
    /* A fresh destination already reads zeros where the backing has none. */
    for (size_t gi = 0; gi < n_gran; gi++) {
        if (cx->gstate[gi] == ST_ZERO)
            cx->gstate[gi] = cx->o->dst_is_new ? ST_SKIP : ST_MUST_ZERO;
    }
}

static int push_op(struct window *win, const struct op *op)
{
    if (win->n_ops == win->cap_ops) {
        size_t cap = win->cap_ops ? 2 * win->cap_ops : 64;
        struct op *p = realloc(win->ops, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        win->ops = p;
        win->cap_ops = cap;
    }
    win->ops[win->n_ops++] = *op;
    return 0;
}

/* Runs of equal granules become one write; compressed data goes a cluster
 * at a time, which is also what lets workers compress in parallel. */
static int emit_ops(struct convert *cx, struct window *win, uint64_t w, uint64_t n)
{
    size_t n_gran = (n + cx->g - 1) / cx->g;
    win->n_ops = 0;
    for (size_t gi = 0; gi < n_gran;) {
        uint8_t st = cx->gstate[gi];
        size_t gj = gi + 1;
        if (st == ST_SKIP) {
            gi = gj;
            continue;
        }
        bool one = st == ST_WRITE && cx->o->compress;
        while (!one && gj < n_gran && cx->gstate[gj] == st)
            gj++;
        uint64_t off = gi * (uint64_t)cx->g;
        struct op op = { .off = w + off, .len = min_u64(gj * (uint64_t)cx->g, n) - off,
                         .zero = st == ST_MUST_ZERO, .buf = win->buf + off };
        if (push_op(win, &op) < 0) {
            record_error(cx, false, w + off, "out of memory", -ENOMEM);
            return -ENOMEM;
        }
        gi = gj;
    }
    return 0;
}

static int plan_window(struct convert *cx, struct window *win, uint64_t w, uint64_t n)
{
    int r = collect_segments(cx, w, n);
    if (r == 0) {
        mark_granules(cx, w, n);
        r = read_sources(cx, win, w);
    }
    if (r == 0 && cx->o->compare_backing)
        r = read_backing(cx, win, w, n);
    if (r == 0) {
        judge_window(cx, win, n);
        r = emit_ops(cx, win, w, n);
    }
    return r;
}

/* ---- writing: worker threads ---- */

static int write_zero_bytes(struct convert *cx, const struct op *op)
{
    struct img *dst = cx->o->dst;
    for (uint64_t done = 0; done < op->len;) {
        uint64_t len = min_u64(op->len - done, cx->window_size);
        int r = dst->fmt->write(dst, cx->zeros, len, op->off + done);
        if (r < 0)
            return r;
        done += len;
    }
    return 0;
}

static int run_op(struct convert *cx, const struct op *op)
{
    struct img *dst = cx->o->dst;
    if (op->zero && dst->fmt->write_zeroes)
        return dst->fmt->write_zeroes(dst, op->off, op->len, dst->backing == NULL);
    if (op->zero)
        return write_zero_bytes(cx, op);
    if (cx->o->compress)
        return dst->fmt->write_compressed(dst, op->buf, op->len, op->off);
    return dst->fmt->write(dst, op->buf, op->len, op->off);
}

/* The oldest busy window with an op nobody has taken yet. */
static struct window *window_with_work(struct convert *cx)
{
    struct window *best = NULL;
    for (unsigned i = 0; i < cx->n_windows; i++) {
        struct window *win = &cx->windows[i];
        if (win->state == WIN_BUSY && win->next_op < win->n_ops && (!best || win->seq < best->seq))
            best = win;
    }
    return best;
}

static void *worker_main(void *arg)
{
    struct convert *cx = arg;
    pthread_mutex_lock(&cx->lock);
    for (;;) {
        struct window *win = window_with_work(cx);
        if (!win) {
            if (cx->stop)
                break;
            pthread_cond_wait(&cx->work_cond, &cx->lock);
            continue;
        }
        const struct op *op = &win->ops[win->next_op++];
        bool skip = cx->failed;
        pthread_mutex_unlock(&cx->lock);
        int r = skip ? 0 : run_op(cx, op);
        /* This thread's own message: another writer may be failing too.
         * A fresh worker thread has no older message. */
        if (r < 0)
            record_error(cx, true, op->off,
                         img_last_error()[0] ? img_last_error() : cx->o->dst->errmsg, r);
        pthread_mutex_lock(&cx->lock);
        if (--win->pending == 0) {
            win->state = WIN_FREE;
            pthread_cond_broadcast(&cx->free_cond);
        }
    }
    pthread_mutex_unlock(&cx->lock);
    return NULL;
}

/* ---- the main loop ---- */

static struct window *take_free_window(struct convert *cx)
{
    struct window *got = NULL;
    pthread_mutex_lock(&cx->lock);
    while (!cx->failed) {
        for (unsigned i = 0; i < cx->n_windows && !got; i++)
            if (cx->windows[i].state == WIN_FREE)
                got = &cx->windows[i];
        if (got) {
            got->state = WIN_FILLING;
            break;
        }
        pthread_cond_wait(&cx->free_cond, &cx->lock);
    }
    pthread_mutex_unlock(&cx->lock);
    return got;
}

static void hand_to_workers(struct convert *cx, struct window *win)
{
    pthread_mutex_lock(&cx->lock);
    if (win->n_ops == 0 || cx->failed) {
        win->state = WIN_FREE;
    } else {
        win->state = WIN_BUSY;
        win->seq = cx->next_seq++;
        win->next_op = 0;
        win->pending = win->n_ops;
        pthread_cond_broadcast(&cx->work_cond);
    }
    pthread_mutex_unlock(&cx->lock);
}

static void produce(struct convert *cx)
{
    for (uint64_t w = 0; w < cx->total; w += cx->window_size) {
        uint64_t n = min_u64(cx->window_size, cx->total - w);
        struct window *win = take_free_window(cx);
        if (!win)
            return;
        int r = plan_window(cx, win, w, n);
        if (r < 0)
            win->n_ops = 0;
        hand_to_workers(cx, win);
        if (r < 0)
            return;
        if (cx->o->progress)
            cx->o->progress(cx->o->progress_ctx, w + n, cx->total);
    }
}

static void stop_workers(struct convert *cx)
{
    pthread_mutex_lock(&cx->lock);
    cx->stop = true;
    pthread_cond_broadcast(&cx->work_cond);
    pthread_mutex_unlock(&cx->lock);
    for (unsigned i = 0; i < cx->n_workers; i++)
        pthread_join(cx->workers[i], NULL);
}

static unsigned default_threads(const struct img_convert_opts *o)
{
    if (o->threads)
        return o->threads < MAX_THREADS ? o->threads : MAX_THREADS;
    if (!o->compress)
        return 1;   /* one writer overlapping the reader is enough for I/O */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus < 1 ? 1 : cpus > MAX_THREADS ? MAX_THREADS : (unsigned)cpus;
}

static void free_convert(struct convert *cx)
{
    for (unsigned i = 0; cx->windows && i < cx->n_windows; i++) {
        free(cx->windows[i].buf);
        free(cx->windows[i].bbuf);
        free(cx->windows[i].ops);
    }
    free(cx->windows);
    free(cx->segs);
    free(cx->gflags);
    free(cx->gstate);
    free(cx->zeros);
    free(cx->src_start);
    pthread_mutex_destroy(&cx->lock);
    pthread_cond_destroy(&cx->work_cond);
    pthread_cond_destroy(&cx->free_cond);
}

static int setup_buffers(struct convert *cx, unsigned threads)
{
    size_t n_gran = cx->window_size / cx->g;
    cx->n_windows = threads + 2;
    cx->windows = calloc(cx->n_windows, sizeof(*cx->windows));
    cx->gflags = malloc(n_gran);
    cx->gstate = malloc(n_gran);
    cx->zeros = calloc(1, cx->window_size);
    if (!cx->windows || !cx->gflags || !cx->gstate || !cx->zeros)
        return -ENOMEM;
    for (unsigned i = 0; i < cx->n_windows; i++) {
        struct window *win = &cx->windows[i];
        win->buf = malloc(cx->window_size);
        win->bbuf = cx->o->compare_backing ? malloc(cx->window_size) : NULL;
        if (!win->buf || (cx->o->compare_backing && !win->bbuf))
            return -ENOMEM;
    }
    return 0;
}

static int check_opts(const struct img_convert_opts *o, struct img_convert_error *err,
                      uint64_t total)
{
    const struct img_format *f = o->dst->fmt;
    const char *why = NULL;
    if (!f->write)
        why = "the destination's format cannot be written";
    else if (o->compress && !f->write_compressed)
        why = "the destination's format does not support compression";
    else if (o->compare_backing && !o->dst->backing)
        why = "the destination has no backing file to compare with";
    else if (o->granule < 512 || (o->granule & (o->granule - 1)))
        why = "the granule must be a power of two of at least 512";
    else if (o->dst->size < total)
        why = "the destination is smaller than the sources";
    if (!why)
        return 0;
    err->writing = true;
    err->offset = 0;
    snprintf(err->msg, sizeof(err->msg), "%s: %s", o->dst->path, why);
    return -EINVAL;
}

static int init_convert(struct convert *cx, const struct img_convert_opts *o,
                        struct img_convert_error *err)
{
    memset(cx, 0, sizeof(*cx));
    cx->o = o;
    cx->err = err;
    pthread_mutex_init(&cx->lock, NULL);
    pthread_cond_init(&cx->work_cond, NULL);
    pthread_cond_init(&cx->free_cond, NULL);
    cx->src_start = calloc(o->n_srcs + 1, sizeof(uint64_t));
    if (!cx->src_start)
        return -ENOMEM;
    for (size_t s = 0; s < o->n_srcs; s++)
        cx->src_start[s + 1] = cx->src_start[s] + o->srcs[s]->size;
    cx->total = cx->src_start[o->n_srcs];
    cx->g = o->granule;
    cx->window_size = IMG_CONVERT_WINDOW < o->granule ? o->granule : IMG_CONVERT_WINDOW;
    return 0;
}

static int finish_flush(struct convert *cx)
{
    struct img *dst = cx->o->dst;
    if (!dst->fmt->flush)
        return 0;
    int r = dst->fmt->flush(dst);
    if (r < 0)
        record_error(cx, true, cx->total, dst->errmsg, r);
    return r;
}

int img_convert(const struct img_convert_opts *o, struct img_convert_error *err)
{
    struct convert cx;
    memset(err, 0, sizeof(*err));
    if (o->n_srcs == 0) {
        snprintf(err->msg, sizeof(err->msg), "no source image");
        return -EINVAL;
    }
    int r = init_convert(&cx, o, err);
    if (r == 0 && (r = check_opts(o, err, cx.total)) < 0) {
        free_convert(&cx);
        return r;
    }
    unsigned threads = default_threads(o);
    if (r == 0)
        r = setup_buffers(&cx, threads);
    if (r < 0) {
        snprintf(err->msg, sizeof(err->msg), "out of memory");
        free_convert(&cx);
        return r;
    }
    o->dst->errmsg[0] = '\0';
    for (unsigned i = 0; i < threads; i++)
        if (pthread_create(&cx.workers[i], NULL, worker_main, &cx) == 0)
            cx.n_workers++;
    if (cx.n_workers == 0)
        record_error(&cx, true, 0, "cannot start a writer thread", -EAGAIN);
    else
        produce(&cx);
    stop_workers(&cx);
    r = cx.failed ? cx.fail_code : finish_flush(&cx);
    free_convert(&cx);
    return r;
}
