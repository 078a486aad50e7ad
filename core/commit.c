/* commit: the upper layers' allocated ranges go into the base.
 *
 * The walk stops above the base on purpose: the base is written through a
 * second, read-write instance (the chain's own instance of it is read-only),
 * so the chain's view of the base would go stale; nothing here asks it. */
#include "commit.h"
#include "convert.h"
#include "format.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COMMIT_CHUNK (4u << 20)

int img_copy_fail(struct img_copy_error *err, bool writing, uint64_t off, struct img *img, int r)
{
    err->writing = writing;
    err->offset = off;
    snprintf(err->msg, sizeof(err->msg), "%s",
             img && img->errmsg[0] ? img->errmsg : strerror(r < 0 ? -r : EIO));
    return r < 0 ? r : -EIO;
}

/* ---- the sink ---- */

int img_sink_init(struct img_sink *s, struct img *dst, size_t cap, struct img_copy_error *err)
{
    memset(s, 0, sizeof(*s));
    s->dst = dst;
    s->cap = cap;
    s->err = err;
    s->may_unmap = dst->backing == NULL;
    s->buf = malloc(cap);
    return s->buf ? 0 : -ENOMEM;
}

void img_sink_free(struct img_sink *s)
{
    free(s->buf);
    s->buf = NULL;
}

static int write_zeroes(struct img *dst, uint64_t off, uint64_t len, bool may_unmap, uint8_t *buf,
                        size_t cap)
{
    if (dst->fmt->write_zeroes)
        return dst->fmt->write_zeroes(dst, off, len, may_unmap);
    memset(buf, 0, cap);   /* a driver without the entry gets plain zeros */
    for (uint64_t done = 0; done < len;) {
        size_t n = len - done < cap ? (size_t)(len - done) : cap;
        int r = dst->fmt->write(dst, buf, n, off + done);
        if (r < 0)
            return r;
        done += n;
    }
    return 0;
}

int img_sink_flush(struct img_sink *s)
{
    if (s->len == 0)
        return 0;
    s->dst->errmsg[0] = '\0';
    int r = s->pending_zero
                ? write_zeroes(s->dst, s->off, s->len, s->may_unmap, s->buf, s->cap)
                : s->dst->fmt->write(s->dst, s->buf, s->len, s->off);
    if (r < 0)
        return img_copy_fail(s->err, true, s->off, s->dst, r);
    s->len = 0;
    return 0;
}

/* Start a new pending run unless [off, +len) continues the current one. */
static int sink_join(struct img_sink *s, bool zero, uint64_t off, uint64_t len)
{
    bool joins = s->len && s->pending_zero == zero && s->off + s->len == off &&
                 (zero || s->len + len <= s->cap);
    if (joins)
        return 0;
    int r = img_sink_flush(s);
    s->off = off;
    s->pending_zero = zero;
    return r;
}

int img_sink_zeroes(struct img_sink *s, uint64_t off, uint64_t len)
{
    int r = sink_join(s, true, off, len);
    if (r == 0)
        s->len += len;
    return r;
}

int img_sink_bytes(struct img_sink *s, const void *buf, uint64_t off, size_t len)
{
    while (len > 0) {
        size_t n = len < s->cap ? len : s->cap;
        int r = sink_join(s, false, off, n);
        if (r < 0)
            return r;
        memcpy(s->buf + s->len, buf, n);
        s->len += n;
        buf = (const uint8_t *)buf + n;
        off += n;
        len -= n;
    }
    return 0;
}

int img_sink_extent(struct img_sink *s, const struct img_extent *ext)
{
    if (ext->kind != IMG_DATA)
        return img_sink_zeroes(s, ext->off, ext->len);
    for (uint64_t off = ext->off, end = ext->off + ext->len; off < end;) {
        uint64_t n = end - off < s->cap ? end - off : s->cap;
        int r = sink_join(s, false, off, n);
        if (r < 0)
            return r;
        struct img_extent piece = *ext;
        img_extent_clip(&piece, off, n);
        r = img_read_extent(&piece, s->buf + s->len);
        if (r < 0)
            return img_copy_fail(s->err, false, off, piece.layer, r);
        s->len += n;
        off += n;
    }
    return 0;
}

/* ---- commit ---- */

static int map_one_layer(struct img *l, uint64_t off, uint64_t len, struct img_extent *ext)
{
    memset(ext, 0, sizeof(*ext));
    ext->fd = -1;
    int r = l->fmt->map(l, off, len, ext);
    if (r < 0)
        return r;
    if (ext->off != off || ext->len == 0 || ext->len > len)
        return img_error(l, EIO, "driver %s answered a map of 0x%llx+0x%llx with 0x%llx+0x%llx",
                         l->fmt->name, (unsigned long long)off, (unsigned long long)len,
                         (unsigned long long)ext->off, (unsigned long long)ext->len);
    if (ext->kind != IMG_DATA)
        ext->fd = -1;
    ext->layer = l;
    return 0;
}

/* The chain's answer from the layers above `base` only.  UNALLOCATED means
 * the base (or below) answers: nothing to commit.  A layer shorter than the
 * offset reads as zeros there, as if it held them (qemu's rule). */
static int map_above(struct img *top, struct img *base, uint64_t off, uint64_t len,
                     struct img_extent *ext, struct img **failed)
{
    for (struct img *l = top; l && l != base; l = l->backing) {
        *failed = l;
        if (off >= l->size) {
            *ext = (struct img_extent){ .off = off, .len = len, .kind = IMG_ZERO, .fd = -1,
                                        .layer = l };
            return 0;
        }
        uint64_t n = len < l->size - off ? len : l->size - off;
        int r = map_one_layer(l, off, n, ext);
        if (r < 0)
            return r;
        if (ext->kind != IMG_UNALLOCATED)
            return 0;
        len = ext->len;
    }
    *ext = (struct img_extent){ .off = off, .len = len, .kind = IMG_UNALLOCATED, .fd = -1 };
    return 0;
}

static int grow_base(const struct img_commit_opts *o, struct img_copy_error *err)
{
    struct img *base = o->base;
    if (base->size >= o->top->size)
        return 0;
    if (!base->fmt->resize) {
        snprintf(err->msg, sizeof(err->msg), "%s: smaller than %s and its format cannot grow",
                 base->path, o->top->path);
        err->writing = true;
        return -ENOTSUP;
    }
    int r = base->fmt->resize(base, o->top->size, false);
    if (r < 0)
        return img_copy_fail(err, true, base->size, base, r);
    base->size = o->top->size;
    return 0;
}

static int commit_ranges(const struct img_commit_opts *o, struct img_sink *sink)
{
    struct img *top = o->top;
    uint64_t reported = 0;
    for (uint64_t off = 0; off < top->size;) {
        struct img_extent ext;
        struct img *failed = top;
        uint64_t len = top->size - off < COMMIT_CHUNK ? top->size - off : COMMIT_CHUNK;
        int r = map_above(top, o->base_layer, off, len, &ext, &failed);
        if (r < 0)
            return img_copy_fail(sink->err, false, off, failed, r);
        if (ext.kind != IMG_UNALLOCATED && (r = img_sink_extent(sink, &ext)) < 0)
            return r;
        off += ext.len;
        if (o->progress && (off - reported >= COMMIT_CHUNK || off == top->size)) {
            o->progress(o->progress_ctx, off, top->size);
            reported = off;
        }
    }
    return img_sink_flush(sink);
}

/* qemu-img commit empties the top (bdrv_make_empty) and only the top: -b,
 * which may name a deeper base, implies -d there, because a layer left in
 * between would shadow the base with older data once the top reads
 * through.  Refused here too, before anything is copied. */
static int check_empty_top(const struct img_commit_opts *o, struct img_copy_error *err)
{
    if (!o->empty_top || o->top->backing == o->base_layer)
        return 0;
    snprintf(err->msg, sizeof(err->msg), "%s: only an image committed into its own backing "
             "file can be emptied (keep it with -d)", o->top->path);
    err->writing = true;
    return -EINVAL;
}

/* Runs after base is flushed: a kill before or during the discard leaves
 * data that top and base both hold, read from either (and leaks at worst
 * in top), never a hole. */
static int empty_top(const struct img_commit_opts *o, struct img_copy_error *err)
{
    struct img *top = o->top;
    if (!top->fmt->discard) {
        if (o->top_kept)
            *o->top_kept = true;
        return 0;
    }
    top->errmsg[0] = '\0';
    int r = top->fmt->discard(top, 0, top->size);
    if (r == 0 && top->fmt->flush)
        r = top->fmt->flush(top);
    if (r < 0) {
        err->writing = true;
        err->offset = 0;
        snprintf(err->msg, sizeof(err->msg), "cannot empty %.200s: %.280s", top->path,
                 top->errmsg[0] ? top->errmsg : strerror(-r));
    }
    return r;
}

int img_commit(const struct img_commit_opts *o, struct img_copy_error *err)
{
    memset(err, 0, sizeof(*err));
    if (o->top_kept)
        *o->top_kept = false;
    int r = check_empty_top(o, err);
    if (r < 0)
        return r;
    if (!o->base->fmt->write) {
        snprintf(err->msg, sizeof(err->msg), "%s: format %s cannot be written", o->base->path,
                 o->base->fmt->name);
        return -ENOTSUP;
    }
    r = grow_base(o, err);
    if (r < 0)
        return r;
    struct img_sink sink;
    if (img_sink_init(&sink, o->base, COMMIT_CHUNK, err) < 0) {
        snprintf(err->msg, sizeof(err->msg), "out of memory");
        return -ENOMEM;
    }
    r = commit_ranges(o, &sink);
    img_sink_free(&sink);
    if (r == 0 && o->base->fmt->flush && (r = o->base->fmt->flush(o->base)) < 0)
        return img_copy_fail(err, true, o->top->size, o->base, r);
    if (r == 0 && o->empty_top)
        r = empty_top(o, err);
    return r;
}
