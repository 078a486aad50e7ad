/* rebase (safe mode): for each range `file` leaves to its backing chain,
 * compare the old chain with the new backing and copy the old bytes where
 * they differ.  Where both map answers name the same stored bytes (the
 * common "drop a middle layer" case) nothing is read at all. */
#include "rebase.h"
#include "convert.h"
#include "format.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REBASE_CHUNK (4u << 20)

struct rebase {
    const struct img_rebase_opts *o;
    struct img_copy_error *err;
    struct img_sink sink;
    uint8_t *old_buf, *new_buf;
    uint32_t unit;             /* comparison unit: the file's cluster */
};

static int read_side(struct rebase *rb, const struct img_extent *ext, uint8_t *buf)
{
    if (ext->kind != IMG_DATA) {
        memset(buf, 0, ext->len);
        return 0;
    }
    int r = img_read_extent(ext, buf);
    return r < 0 ? img_copy_fail(rb->err, false, ext->off, ext->layer, r) : 0;
}

/* Both sides read; queue the old bytes of every unit that differs. */
static int copy_differences(struct rebase *rb, uint64_t off, uint64_t len)
{
    for (uint64_t a = off, end = off + len; a < end;) {
        uint64_t b = (a / rb->unit + 1) * rb->unit;
        if (b > end)
            b = end;
        const uint8_t *old = rb->old_buf + (a - off);
        int r = 0;
        if (memcmp(old, rb->new_buf + (a - off), b - a) != 0)
            r = img_buf_is_zero(old, b - a) ? img_sink_zeroes(&rb->sink, a, b - a)
                                            : img_sink_bytes(&rb->sink, old, a, b - a);
        if (r < 0)
            return r;
        a = b;
    }
    return 0;
}

/* [off, +len) is not allocated in the file: `old` is the old chain's answer
 * for it.  Returns the bytes handled (<= len). */
static int64_t rebase_piece(struct rebase *rb, struct img_extent *old)
{
    struct img_extent nw = { .off = old->off, .len = old->len, .kind = IMG_UNALLOCATED, .fd = -1 };
    struct img *nb = rb->o->new_backing;
    if (nb) {
        int r = img_map_padded(nb, old->off, old->len, &nw);
        if (r < 0)
            return img_copy_fail(rb->err, false, old->off, nb, r);
    }
    uint64_t len = nw.len < old->len ? nw.len : old->len;
    img_extent_clip(old, old->off, len);
    img_extent_clip(&nw, nw.off, len);
    if ((old->kind != IMG_DATA && nw.kind != IMG_DATA) || img_extents_same_bytes(old, &nw))
        return (int64_t)len;
    int r = read_side(rb, old, rb->old_buf);
    if (r == 0)
        r = read_side(rb, &nw, rb->new_buf);
    if (r == 0)
        r = copy_differences(rb, old->off, len);
    return r < 0 ? r : (int64_t)len;
}

static int rebase_ranges(struct rebase *rb)
{
    struct img *file = rb->o->file;
    uint64_t reported = 0;
    for (uint64_t off = 0; off < file->size;) {
        struct img_extent ext;
        uint64_t len = file->size - off < REBASE_CHUNK ? file->size - off : REBASE_CHUNK;
        int r = img_map(file, off, len, &ext);
        if (r < 0)
            return img_copy_fail(rb->err, false, off, file, r);
        int64_t done = (int64_t)ext.len;
        /* Held by the file itself: it reads the same whatever lies below. */
        bool own = ext.depth == 0 && ext.kind != IMG_UNALLOCATED;
        if (!own && (done = rebase_piece(rb, &ext)) < 0)
            return (int)done;
        off += (uint64_t)done;
        if (rb->o->progress && (off - reported >= REBASE_CHUNK || off == file->size)) {
            rb->o->progress(rb->o->progress_ctx, off, file->size);
            reported = off;
        }
    }
    return img_sink_flush(&rb->sink);
}

static int finish(struct rebase *rb)
{
    struct img *file = rb->o->file;
    int r = file->fmt->set_backing(file, rb->o->backing_name, rb->o->backing_fmt);
    if (r < 0)
        return img_copy_fail(rb->err, true, 0, file, r);
    if (file->fmt->flush && (r = file->fmt->flush(file)) < 0)
        return img_copy_fail(rb->err, true, file->size, file, r);
    return 0;
}

int img_rebase(const struct img_rebase_opts *o, struct img_copy_error *err)
{
    struct rebase rb = { .o = o, .err = err };
    struct img *file = o->file;
    memset(err, 0, sizeof(*err));
    if (!file->fmt->set_backing || !file->fmt->write) {
        snprintf(err->msg, sizeof(err->msg), "%s: format %s cannot record a backing file",
                 file->path, file->fmt->name);
        err->writing = true;
        return -ENOTSUP;
    }
    rb.unit = file->cluster_size ? file->cluster_size : 65536;
    rb.old_buf = malloc(REBASE_CHUNK);
    rb.new_buf = malloc(REBASE_CHUNK);
    int r = rb.old_buf && rb.new_buf ? img_sink_init(&rb.sink, file, REBASE_CHUNK, err) : -ENOMEM;
    /* The file has a backing until set_backing: its zeros must shadow it. */
    rb.sink.may_unmap = false;
    if (r == 0)
        r = rebase_ranges(&rb);
    if (r == 0)
        r = finish(&rb);
    else if (r == -ENOMEM && !err->msg[0])
        snprintf(err->msg, sizeof(err->msg), "out of memory");
    img_sink_free(&rb.sink);
    free(rb.old_buf);
    free(rb.new_buf);
    return r;
}
