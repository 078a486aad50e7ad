/* streamOptimized writer.  The file is written once, front to back, as
 * VMware's spec lays it out for streaming: header (GD "at end"), embedded
 * descriptor, compressed grains each behind a grain marker {lba, size} in
 * increasing guest order, then a grain table marker + table for each table
 * that holds grains, a grain directory marker + directory, a footer marker
 * + footer (the header with the real directory offset) and an end-of-stream
 * marker.  The tables stay in memory until flush/close writes that tail;
 * a write after a flush overwrites the tail and a later flush writes it
 * again further on.
 *
 * Writers with several threads (convert -c) hand in grains slightly out of
 * order, so compressed grains wait in a small queue sorted by grain and
 * leave it lowest first; a grain that arrives after a higher one has left
 * is refused: the stream cannot go back. */
#include "vmdk.h"

#include "core/bytes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define QUEUE_MAX 64
#define MARKER_GT 1
#define MARKER_GD 2
#define MARKER_FOOTER 3

struct queued {
    uint64_t grain;
    uint8_t *rec;       /* marker + compressed bytes, padded to a sector */
    size_t len;
};

struct vmdk_stream {
    pthread_mutex_t lock;
    const char *sealed;        /* why writes are refused, or NULL */
    bool started;              /* the tables below are the truth */
    bool dirty;                /* grains written since the tail */
    uint32_t **gts;            /* gd_entries tables, NULL = no grain yet */
    uint64_t end;              /* where the next grain goes */
    bool any_emitted;
    uint64_t last_emitted;
    bool open;                 /* a grain being filled by partial writes */
    uint64_t open_grain;
    uint8_t *open_buf;
    struct queued q[QUEUE_MAX];
    size_t nq;
};

static int stream_error(struct img *img, struct vmdk_sparse *sp, int e, const char *what,
                        uint64_t grain)
{
    return img_error(img, e, "%s: streamOptimized: %s (guest offset 0x%llx)", sp->name, what,
                     (unsigned long long)(grain * sp->grain_bytes));
}

/* ---- setup ---- */

/* A stream that holds grains already was finished by someone: we do not
 * append to it (its tail would have to move under its readers). */
static int find_grains(struct img *img, struct vmdk_sparse *sp, bool *any)
{
    size_t n = sp->h.gtes_per_gt;
    uint8_t raw[512 * 4];
    *any = false;
    for (uint32_t i = 0; i < sp->gd_entries && !*any; i++) {
        if (sp->gd[i] == 0)
            continue;
        int r = img_pread(img, sp->fd, raw, n * 4, (uint64_t)sp->gd[i] * VMDK_SECTOR,
                          "grain table");
        if (r < 0)
            return r;
        for (size_t k = 0; k < n && !*any; k++)
            *any = get_le32(raw + 4 * k) != 0;
    }
    return 0;
}

int vmdk_stream_open(struct img *img, struct vmdk_sparse *sp)
{
    struct vmdk_stream *s = calloc(1, sizeof(*s));
    if (!s)
        return img_error(img, ENOMEM, "%s: out of memory", sp->name);
    pthread_mutex_init(&s->lock, NULL);
    sp->stream = s;
    if (!sp->has_marker) {
        s->sealed = "compressed grains without markers are not written by this driver";
        return 0;
    }
    bool any;
    int r = find_grains(img, sp, &any);
    if (r < 0)
        return r;
    if (any)
        s->sealed = "the image holds grains already, and a stream is written only once; "
                    "convert it to a new image instead";
    s->end = sp->h.grain_offset * VMDK_SECTOR;
    s->gts = calloc(sp->gd_entries, sizeof(*s->gts));
    if (!s->gts)
        return img_error(img, ENOMEM, "%s: out of memory", sp->name);
    return 0;
}

void vmdk_stream_free(struct vmdk_sparse *sp)
{
    struct vmdk_stream *s = sp->stream;
    if (!s)
        return;
    for (uint32_t i = 0; s->gts && i < sp->gd_entries; i++)
        free(s->gts[i]);
    free(s->gts);
    for (size_t i = 0; i < s->nq; i++)
        free(s->q[i].rec);
    free(s->open_buf);
    pthread_mutex_destroy(&s->lock);
    free(s);
    sp->stream = NULL;
}

bool vmdk_stream_lookup(struct vmdk_sparse *sp, uint64_t grain, uint32_t *gte)
{
    struct vmdk_stream *s = sp->stream;
    pthread_mutex_lock(&s->lock);
    bool known = s->started;
    if (known) {
        const uint32_t *gt = s->gts[grain / sp->h.gtes_per_gt];
        *gte = gt ? gt[grain % sp->h.gtes_per_gt] : 0;
    }
    pthread_mutex_unlock(&s->lock);
    return known;
}

/* ---- the tail ---- */

static void put_marker(uint8_t *sector, uint64_t val, uint32_t type)
{
    memset(sector, 0, VMDK_SECTOR);
    put_le64(sector, val);
    put_le32(sector + 12, type);
}

static uint64_t sectors_of(uint64_t bytes)
{
    return (bytes + VMDK_SECTOR - 1) / VMDK_SECTOR;
}

uint8_t *vmdk_stream_tail(const struct vmdk_sparse_header *h, uint32_t *const *gts,
                          uint32_t gd_entries, uint64_t pos, size_t *len)
{
    uint64_t gt_sec = sectors_of((uint64_t)h->gtes_per_gt * 4);
    uint64_t gd_sec = sectors_of((uint64_t)gd_entries * 4);
    uint64_t n_gts = 0;
    for (uint32_t i = 0; i < gd_entries; i++)
        n_gts += gts && gts[i];
    uint64_t total = (n_gts * (1 + gt_sec) + 1 + gd_sec + 3) * VMDK_SECTOR;
    uint8_t *buf = calloc(1, total), *p = buf;
    uint8_t *gd = NULL;
    if (!buf)
        return NULL;
    for (uint32_t i = 0; i < gd_entries; i++) {
        if (!gts || !gts[i])
            continue;
        put_marker(p, gt_sec, MARKER_GT);
        p += VMDK_SECTOR;
        for (uint32_t k = 0; k < h->gtes_per_gt; k++)
            put_le32(p + 4 * k, gts[i][k]);
        p += gt_sec * VMDK_SECTOR;
    }
    put_marker(p, gd_sec, MARKER_GD);
    p += VMDK_SECTOR;
    gd = p;
    uint64_t gt_at = pos / VMDK_SECTOR;
    for (uint32_t i = 0; i < gd_entries; i++) {
        if (!gts || !gts[i])
            continue;
        put_le32(gd + 4 * (size_t)i, (uint32_t)(gt_at + 1));
        gt_at += 1 + gt_sec;
    }
    p += gd_sec * VMDK_SECTOR;
    struct vmdk_sparse_header f = *h;
    f.gd_offset = (uint64_t)(gd - buf) / VMDK_SECTOR + pos / VMDK_SECTOR;
    put_marker(p, 1, MARKER_FOOTER);
    vmdk_sparse_header_encode(p + VMDK_SECTOR, &f);
    p += 2 * VMDK_SECTOR;
    put_marker(p, 0, 0);   /* end of stream */
    *len = total;
    return buf;
}

/* ---- grains ---- */

/* The record of one grain: marker {lba, size} and its deflated bytes. */
static int compress_grain(struct img *img, struct vmdk_sparse *sp, uint64_t grain,
                          const uint8_t *data, struct queued *out)
{
    uLongf n = compressBound((uLong)sp->grain_bytes);
    uint8_t *rec = calloc(1, VMDK_MARKER_SIZE + n + VMDK_SECTOR);
    if (!rec)
        return img_error(img, ENOMEM, "%s: no memory for a grain", sp->name);
    /* A zlib stream (header and all), as VMware and qemu write grains. */
    if (compress2(rec + VMDK_MARKER_SIZE, &n, data, (uLong)sp->grain_bytes,
                  Z_DEFAULT_COMPRESSION) != Z_OK) {
        free(rec);
        return stream_error(img, sp, ENOMEM, "cannot deflate a grain", grain);
    }
    put_le64(rec, grain * sp->h.grain_sectors);
    put_le32(rec + 8, (uint32_t)n);
    out->grain = grain;
    out->rec = rec;
    out->len = sectors_of(VMDK_MARKER_SIZE + (uint64_t)n) * VMDK_SECTOR;
    return 0;
}

/* The first write turns the file into a stream in the making: the header
 * says "directory at the end" (an empty stream made by qemu-img keeps its
 * tables at the front). */
static int start(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s)
{
    if (s->started)
        return 0;
    struct vmdk_sparse_header h = sp->h;
    h.gd_offset = VMDK_GD_AT_END;
    h.flags &= ~VMDK_FLAG_RGD;
    h.rgd_offset = 0;
    uint8_t buf[VMDK_HEADER_SIZE];
    vmdk_sparse_header_encode(buf, &h);
    int r = img_write_full(sp->fd, buf, sizeof(buf), 0);
    if (r < 0)
        return img_error(img, -r, "%s: writing the header: %s", sp->name, strerror(-r));
    sp->h.flags = h.flags;
    sp->h.rgd_offset = 0;
    s->started = true;
    s->dirty = true;   /* the header now wants a footer */
    return 0;
}

static int emit(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s,
                struct queued *q)
{
    uint32_t gt_index = (uint32_t)(q->grain / sp->h.gtes_per_gt);
    if (!s->gts[gt_index] && !(s->gts[gt_index] = calloc(sp->h.gtes_per_gt, 4)))
        return img_error(img, ENOMEM, "%s: no memory for a grain table", sp->name);
    if ((s->end + q->len) / VMDK_SECTOR > UINT32_MAX)
        return stream_error(img, sp, EFBIG, "the file would pass 2 TiB", q->grain);
    int r = img_write_full(sp->fd, q->rec, q->len, s->end);
    if (r < 0)
        return img_error(img, -r, "%s: writing a grain at 0x%llx: %s", sp->name,
                         (unsigned long long)s->end, strerror(-r));
    s->gts[gt_index][q->grain % sp->h.gtes_per_gt] = (uint32_t)(s->end / VMDK_SECTOR);
    s->end += q->len;
    if (sp->file_size < s->end)
        sp->file_size = s->end;
    s->any_emitted = true;
    s->last_emitted = q->grain;
    s->dirty = true;
    return 0;
}

static int emit_lowest(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s)
{
    struct queued q = s->q[0];
    memmove(&s->q[0], &s->q[1], (s->nq - 1) * sizeof(s->q[0]));
    s->nq--;
    int r = emit(img, sp, s, &q);
    free(q.rec);
    return r;
}

static bool is_pending(const struct vmdk_stream *s, uint64_t grain)
{
    for (size_t i = 0; i < s->nq; i++)
        if (s->q[i].grain == grain)
            return true;
    return false;
}

static bool already_written(struct vmdk_sparse *sp, struct vmdk_stream *s, uint64_t grain)
{
    const uint32_t *gt = s->gts[grain / sp->h.gtes_per_gt];
    return (gt && gt[grain % sp->h.gtes_per_gt]) || is_pending(s, grain);
}

/* Queue a compressed grain (lock held); takes q->rec. */
static int enqueue(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s,
                   struct queued *q)
{
    int r = 0;
    if (already_written(sp, s, q->grain))
        r = stream_error(img, sp, EINVAL, "this grain was written already, and a stream "
                         "cannot rewrite a grain", q->grain);
    else if (s->any_emitted && q->grain < s->last_emitted)
        r = stream_error(img, sp, EINVAL, "grains must be written in increasing order, and "
                         "a later grain is in the file already", q->grain);
    if (r == 0 && s->nq == QUEUE_MAX)
        r = emit_lowest(img, sp, s);
    if (r < 0) {
        free(q->rec);
        return r;
    }
    size_t i = s->nq;
    while (i > 0 && s->q[i - 1].grain > q->grain) {
        s->q[i] = s->q[i - 1];
        i--;
    }
    s->q[i] = *q;
    s->nq++;
    return 0;
}

static int check_writable(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s)
{
    if (s->sealed)
        return img_error(img, ENOTSUP, "%s: cannot write to this streamOptimized image: %s",
                         sp->name, s->sealed);
    return start(img, sp, s);
}

/* Compress (outside the lock: this is what threads are for) and queue. */
static int put_whole_grain(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s,
                           uint64_t grain, const uint8_t *data)
{
    struct queued q;
    int r = compress_grain(img, sp, grain, data, &q);
    if (r < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    r = check_writable(img, sp, s);
    if (r == 0)
        r = enqueue(img, sp, s, &q);
    else
        free(q.rec);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Seal the grain being filled (lock held). */
static int seal_open(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s)
{
    if (!s->open)
        return 0;
    s->open = false;
    struct queued q;
    int r = compress_grain(img, sp, s->open_grain, s->open_buf, &q);
    return r < 0 ? r : enqueue(img, sp, s, &q);
}

static int fill_base(struct img *img, struct vmdk_sparse *sp, uint64_t at, uint8_t *buf)
{
    memset(buf, 0, sp->grain_bytes);
    struct img *b = img->backing;
    if (!b || at >= b->size)
        return 0;
    uint64_t n = b->size - at < sp->grain_bytes ? b->size - at : sp->grain_bytes;
    int r = img_read(b, buf, n, at);
    return r < 0 ? img_error(img, -r, "%s: copy-on-write read of the backing file: %s",
                             sp->name, b->errmsg) : 0;
}

/* Part of a grain (lock held): into the open grain.  buf NULL = zeros. */
static int put_partial(struct img *img, struct vmdk_sparse *sp, struct vmdk_stream *s,
                       uint64_t guest, uint64_t grain, uint64_t in, const uint8_t *buf,
                       uint64_t n)
{
    int r = check_writable(img, sp, s);
    if (r == 0 && s->open && s->open_grain != grain)
        r = seal_open(img, sp, s);
    if (r == 0 && !s->open) {
        if (already_written(sp, s, grain))
            return stream_error(img, sp, EINVAL, "this grain was written already, and a "
                                "stream cannot rewrite a grain", grain);
        if (!s->open_buf && !(s->open_buf = malloc(sp->grain_bytes)))
            return img_error(img, ENOMEM, "%s: no memory for a grain", sp->name);
        r = fill_base(img, sp, guest + grain * sp->grain_bytes, s->open_buf);
        s->open = r == 0;
        s->open_grain = grain;
    }
    if (r < 0)
        return r;
    if (buf)
        memcpy(s->open_buf + in, buf, n);
    else
        memset(s->open_buf + in, 0, n);
    return 0;
}

static bool all_zero(const uint8_t *p, uint64_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

int vmdk_stream_write(struct img *img, struct vmdk_sparse *sp, uint64_t guest,
                      const uint8_t *buf, uint64_t len, uint64_t off)
{
    struct vmdk_stream *s = sp->stream;
    uint64_t gb = sp->grain_bytes;
    int r = 0;
    while (len > 0 && r == 0) {
        uint64_t grain = off / gb, in = off % gb, n = gb - in < len ? gb - in : len;
        /* The disk's last grain may be short: whole means "to the end". */
        bool whole = in == 0 && (n == gb || off + n == sp->size);
        if (whole && n == gb && !img->backing && all_zero(buf, n)) {
            r = 0;   /* an unwritten grain reads as zeros: nothing to store */
        } else if (whole && n == gb) {
            r = put_whole_grain(img, sp, s, grain, buf);
        } else {
            pthread_mutex_lock(&s->lock);
            r = put_partial(img, sp, s, guest, grain, in, buf, n);
            pthread_mutex_unlock(&s->lock);
        }
        buf += n;
        off += n;
        len -= n;
    }
    return r;
}

int vmdk_stream_zero(struct img *img, struct vmdk_sparse *sp, uint64_t guest, uint64_t len,
                     uint64_t off)
{
    struct vmdk_stream *s = sp->stream;
    uint64_t gb = sp->grain_bytes;
    int r = 0;
    pthread_mutex_lock(&s->lock);
    while (len > 0 && r == 0) {
        uint64_t grain = off / gb, in = off % gb, n = gb - in < len ? gb - in : len;
        bool below_zero = !img->backing || guest + grain * gb >= img->backing->size;
        if (s->open && s->open_grain == grain)
            memset(s->open_buf + in, 0, n);
        else if (already_written(sp, s, grain))
            r = stream_error(img, sp, EINVAL, "this grain was written already, and a stream "
                             "cannot rewrite a grain", grain);
        else if (!below_zero)
            r = put_partial(img, sp, s, guest, grain, in, NULL, n);
        off += n;
        len -= n;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

int vmdk_stream_finish(struct img *img, struct vmdk_sparse *sp)
{
    struct vmdk_stream *s = sp->stream;
    pthread_mutex_lock(&s->lock);
    int r = seal_open(img, sp, s);
    while (r == 0 && s->nq > 0)
        r = emit_lowest(img, sp, s);
    if (r == 0 && s->dirty) {
        size_t len;
        uint8_t *tail = vmdk_stream_tail(&sp->h, s->gts, sp->gd_entries, s->end, &len);
        r = tail ? img_write_full(sp->fd, tail, len, s->end) : -ENOMEM;
        if (r == 0 && ftruncate(sp->fd, (off_t)(s->end + len)) < 0)
            r = -errno;
        free(tail);
        if (r < 0)
            r = img_error(img, -r, "%s: writing the stream's tables and footer: %s", sp->name,
                          strerror(-r));
        else
            s->dirty = false;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}
