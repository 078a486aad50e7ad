/* qcow2 refcounts for the writer: the refcount table and blocks in memory,
 * cluster allocation, growing the table, and the queue of references that
 * may only be dropped once the tables that held them are on disk.
 *
 * Placement rules:
 * - A missing refcount block is created at the first cluster of the range it
 *   describes (it is free, since no block said otherwise), so it counts
 *   itself and the file grows in order.
 * - A larger refcount table goes past every cluster in use, followed by the
 *   blocks that describe its own clusters; it is written in full, with those
 *   blocks, and synced before the header points to it (see write.c for the
 *   ordering of everything else). */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/bytes.h"

/* QEMU refuses refcount tables larger than this. */
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)

/* ---- plain I/O ---- */

int qcow2_pwrite(struct img *img, const void *buf, size_t len, uint64_t off, const char *what)
{
    const uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(img->fd, p + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return img_error(img, n < 0 ? errno : EIO, "cannot write %s at 0x%llx: %s", what,
                             (unsigned long long)(off + done),
                             strerror(n < 0 ? errno : EIO));
        done += (size_t)n;
    }
    return 0;
}

int qcow2_sync(struct img *img)
{
    return img_sync(img, img->fd, "the image");
}

/* ---- entries of one block (widths 1..64 bits, as the spec packs them) ---- */

static uint64_t entry_get(const uint8_t *b, unsigned bits, uint64_t i)
{
    switch (bits) {
    case 8: return b[i];
    case 16: return get_be16(b + 2 * i);
    case 32: return get_be32(b + 4 * i);
    case 64: return get_be64(b + 8 * i);
    }
    /* Sub-byte widths: the lowest bits of a byte hold the first entry. */
    unsigned per_byte = 8 / bits, shift = bits * (unsigned)(i % per_byte);
    return (b[i / per_byte] >> shift) & ((1u << bits) - 1);
}

static void entry_set(uint8_t *b, unsigned bits, uint64_t i, uint64_t v)
{
    switch (bits) {
    case 8: b[i] = (uint8_t)v; return;
    case 16: put_be16(b + 2 * i, (uint16_t)v); return;
    case 32: put_be32(b + 4 * i, (uint32_t)v); return;
    case 64: put_be64(b + 8 * i, v); return;
    }
    unsigned per_byte = 8 / bits, shift = bits * (unsigned)(i % per_byte);
    uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
    b[i / per_byte] = (uint8_t)((b[i / per_byte] & ~mask) | ((v << shift) & mask));
}

/* ---- setup ---- */

static int load_table(struct img *img, struct qcow2 *q, struct qcow2_writer *w)
{
    const struct qcow2_header *h = &q->h;
    uint64_t bytes = (uint64_t)h->refcount_table_clusters * q->cluster_size;
    if (h->refcount_table_clusters == 0 || bytes > QCOW2_MAX_REFTABLE_BYTES)
        return img_error(img, EINVAL, "refcount table of %u clusters is empty or too large",
                         h->refcount_table_clusters);
    if (h->refcount_table_offset & (q->cluster_size - 1))
        return img_error(img, EINVAL, "refcount table offset 0x%llx is not cluster aligned",
                         (unsigned long long)h->refcount_table_offset);
    if (!qcow2_fits(img->fd, &q->file_size, h->refcount_table_offset + bytes))
        return img_error(img, EINVAL, "refcount table at 0x%llx lies past the end of the file",
                         (unsigned long long)h->refcount_table_offset);
    w->rt_entries = bytes / 8;
    w->rt_offset = h->refcount_table_offset;
    w->rt_clusters = h->refcount_table_clusters;
    uint8_t *raw = malloc(bytes);
    w->rt = malloc(bytes);
    w->rb = calloc(w->rt_entries, sizeof(*w->rb));
    if (!raw || !w->rt || !w->rb) {
        free(raw);
        return -ENOMEM;
    }
    int r = img_pread(img, img->fd, raw, bytes, w->rt_offset, "refcount table");
    for (uint64_t i = 0; r == 0 && i < w->rt_entries; i++)
        w->rt[i] = get_be64(raw + 8 * i);
    free(raw);
    return r;
}

int qcow2_writer_init(struct img *img, struct qcow2 *q)
{
    struct qcow2_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    q->w = w;
    w->rc_bits = 1u << q->h.refcount_order;
    w->rc_max = w->rc_bits == 64 ? (uint64_t)INT64_MAX : (1ull << w->rc_bits) - 1;
    w->rb_entries = (uint64_t)q->cluster_size * 8 / w->rc_bits;
    w->top = ((uint64_t)q->file_size + q->cluster_size - 1) >> q->geom.cluster_bits;
    w->scratch = malloc(q->cluster_size);
    if (!w->scratch)
        return -ENOMEM;
    return load_table(img, q, w);
}

void qcow2_writer_free(struct qcow2 *q)
{
    struct qcow2_writer *w = q->w;
    if (!w)
        return;
    for (uint64_t i = 0; w->rb && i < w->rt_entries; i++)
        free(w->rb[i].data);
    free(w->rb);
    free(w->rt);
    free(w->pending);
    free(w->scratch);
    free(w);
    q->w = NULL;
}

/* ---- blocks ---- */

static bool block_missing(const struct qcow2_writer *w, uint64_t i)
{
    return i >= w->rt_entries || w->rt[i] == 0;
}

static int load_block(struct img *img, struct qcow2 *q, uint64_t i)
{
    struct qcow2_writer *w = q->w;
    if (w->rb[i].data)
        return 0;
    uint64_t off = w->rt[i];
    if (off & (q->cluster_size - 1))
        return img_error(img, EIO, "refcount block %llu at 0x%llx is not cluster aligned",
                         (unsigned long long)i, (unsigned long long)off);
    if (!qcow2_fits(img->fd, &q->file_size, off + q->cluster_size))
        return img_error(img, EIO, "refcount block %llu at 0x%llx lies past the end of the file",
                         (unsigned long long)i, (unsigned long long)off);
    uint8_t *data = malloc(q->cluster_size);
    if (!data)
        return -ENOMEM;
    int r = img_pread(img, img->fd, data, q->cluster_size, off, "refcount block");
    if (r < 0) {
        free(data);
        return r;
    }
    w->rb[i].data = data;
    return 0;
}

static void mark_table_dirty(struct qcow2_writer *w, uint64_t i)
{
    if (w->rt_dirty_hi == w->rt_dirty_lo) {
        w->rt_dirty_lo = i;
        w->rt_dirty_hi = i + 1;
        return;
    }
    if (i < w->rt_dirty_lo)
        w->rt_dirty_lo = i;
    if (i + 1 > w->rt_dirty_hi)
        w->rt_dirty_hi = i + 1;
}

/* Block i is missing: a zeroed block at `cluster` (counted by the caller). */
static int create_block(struct qcow2 *q, uint64_t i, uint64_t cluster)
{
    struct qcow2_writer *w = q->w;
    uint8_t *data = calloc(1, q->cluster_size);
    if (!data)
        return -ENOMEM;
    w->rb[i].data = data;
    w->rb[i].dirty = true;
    w->rt[i] = cluster << q->geom.cluster_bits;
    mark_table_dirty(w, i);
    if (cluster + 1 > w->top)
        w->top = cluster + 1;
    return 0;
}

int qcow2_rc_get(struct img *img, struct qcow2 *q, uint64_t cluster, uint64_t *value)
{
    struct qcow2_writer *w = q->w;
    uint64_t i = cluster / w->rb_entries;
    if (block_missing(w, i)) {
        *value = 0;
        return 0;
    }
    int r = load_block(img, q, i);
    if (r == 0)
        *value = entry_get(w->rb[i].data, w->rc_bits, cluster % w->rb_entries);
    return r;
}

/* Set a refcount whose block exists. */
static int set_existing(struct img *img, struct qcow2 *q, uint64_t cluster, uint64_t value)
{
    struct qcow2_writer *w = q->w;
    uint64_t i = cluster / w->rb_entries;
    if (block_missing(w, i))
        return img_error(img, EIO, "no refcount block for cluster %llu",
                         (unsigned long long)cluster);
    int r = load_block(img, q, i);
    if (r < 0)
        return r;
    entry_set(w->rb[i].data, w->rc_bits, cluster % w->rb_entries, value);
    w->rb[i].dirty = true;
    if (value == 0 && cluster < w->free_hint)
        w->free_hint = cluster;
    if (value > 0 && cluster + 1 > w->top)
        w->top = cluster + 1;
    return 0;
}

int qcow2_rc_set(struct img *img, struct qcow2 *q, uint64_t cluster, uint64_t value)
{
    if (value > q->w->rc_max)
        return img_error(img, EOVERFLOW, "refcount of cluster %llu would pass %llu",
                         (unsigned long long)cluster, (unsigned long long)q->w->rc_max);
    return set_existing(img, q, cluster, value);
}

int qcow2_add_ref(struct img *img, struct qcow2 *q, uint64_t cluster)
{
    uint64_t v;
    int r = qcow2_rc_get(img, q, cluster, &v);
    return r < 0 ? r : qcow2_rc_set(img, q, cluster, v + 1);
}

/* ---- growing the refcount table ---- */

static uint64_t clusters_for_entries(const struct qcow2 *q, uint64_t entries)
{
    return (entries * 8 + q->cluster_size - 1) >> q->geom.cluster_bits;
}

/* Size a new table at cluster `start` that covers index `need`, itself and
 * the blocks it adds; *n_new is the count of those blocks. */
static void size_new_table(const struct qcow2 *q, uint64_t start, uint64_t need,
                           uint64_t *clusters, uint64_t *n_new)
{
    const struct qcow2_writer *w = q->w;
    uint64_t t = w->rt_clusters + w->rt_clusters / 2 + 1, r = 0;
    if (t < clusters_for_entries(q, need + 1))
        t = clusters_for_entries(q, need + 1);
    for (;;) {
        uint64_t last = (start + t + r - 1) / w->rb_entries;
        uint64_t cover = last > need ? last : need;
        if ((t << q->geom.cluster_bits) / 8 <= cover) {
            t = clusters_for_entries(q, cover + 1);
            continue;
        }
        uint64_t missing = 0;
        for (uint64_t i = start / w->rb_entries; i <= last; i++)
            missing += block_missing(w, i);
        if (missing == r)
            break;
        r = missing;
    }
    *clusters = t;
    *n_new = r;
}

/* Move the in-memory table into arrays of `entries` and add the blocks for
 * [start, end) that are missing, placed from cluster `first_block` on. */
static int install_table(struct qcow2 *q, uint64_t entries, uint64_t start, uint64_t end,
                         uint64_t first_block)
{
    struct qcow2_writer *w = q->w;
    uint64_t *rt = calloc(entries, sizeof(*rt));
    struct qcow2_refblock *rb = calloc(entries, sizeof(*rb));
    if (!rt || !rb) {
        free(rt);
        free(rb);
        return -ENOMEM;
    }
    memcpy(rt, w->rt, w->rt_entries * sizeof(*rt));
    memcpy(rb, w->rb, w->rt_entries * sizeof(*rb));
    uint64_t placed = 0;
    for (uint64_t i = start / w->rb_entries; i <= (end - 1) / w->rb_entries; i++) {
        if (i < w->rt_entries && rt[i])
            continue;
        rb[i].data = calloc(1, q->cluster_size);
        if (!rb[i].data)
            return -ENOMEM;   /* the new arrays leak their few blocks; rare */
        rb[i].dirty = true;
        rt[i] = (first_block + placed++) << q->geom.cluster_bits;
    }
    free(w->rt);
    free(w->rb);
    w->rt = rt;
    w->rb = rb;
    w->rt_entries = entries;
    return 0;
}

/* Blocks, table, barrier, header, barrier: until the header names the new
 * table, the old one (and the blocks it names) stays the valid picture. */
static int write_new_table(struct img *img, struct qcow2 *q)
{
    struct qcow2_writer *w = q->w;
    uint64_t bytes = (uint64_t)w->rt_clusters << q->geom.cluster_bits;
    uint8_t *raw = calloc(1, bytes);
    if (!raw)
        return -ENOMEM;
    for (uint64_t i = 0; i < w->rt_entries; i++)
        put_be64(raw + 8 * i, w->rt[i]);
    int r = 0;
    for (uint64_t i = 0; r == 0 && i < w->rt_entries; i++) {
        if (!w->rb[i].dirty)
            continue;
        r = qcow2_pwrite(img, w->rb[i].data, q->cluster_size, w->rt[i], "refcount block");
        w->rb[i].dirty = r < 0;
    }
    if (r == 0)
        r = qcow2_pwrite(img, raw, bytes, w->rt_offset, "refcount table");
    free(raw);
    if (r == 0)
        r = qcow2_sync(img);
    uint8_t hdr[12];
    put_be64(hdr, w->rt_offset);
    put_be32(hdr + 8, w->rt_clusters);
    if (r == 0)
        r = qcow2_pwrite(img, hdr, sizeof(hdr), 48, "header");
    if (r == 0)
        r = qcow2_sync(img);
    return r;
}

static int grow_table(struct img *img, struct qcow2 *q, uint64_t need)
{
    struct qcow2_writer *w = q->w;
    uint64_t start = w->top, t, n_new;
    size_new_table(q, start, need, &t, &n_new);
    if ((t << q->geom.cluster_bits) > QCOW2_MAX_REFTABLE_BYTES)
        return img_error(img, EFBIG, "the refcount table would pass %u MiB",
                         QCOW2_MAX_REFTABLE_BYTES >> 20);
    uint64_t end = start + t + n_new;
    uint64_t old_off = w->rt_offset, old_clusters = w->rt_clusters;
    int r = install_table(q, (t << q->geom.cluster_bits) / 8, start, end, start + t);
    if (r < 0)
        return r;
    w->rt_offset = start << q->geom.cluster_bits;
    w->rt_clusters = (uint32_t)t;
    for (uint64_t c = start; r == 0 && c < end; c++)
        r = set_existing(img, q, c, 1);
    if (r == 0)
        r = write_new_table(img, q);
    if (r < 0) {
        w->broken = true;
        return r;
    }
    w->rt_dirty_lo = w->rt_dirty_hi = 0;
    q->h.refcount_table_offset = w->rt_offset;
    q->h.refcount_table_clusters = w->rt_clusters;
    /* Nothing on disk names the old table any more. */
    for (uint64_t c = 0; r == 0 && c < old_clusters; c++) {
        uint64_t cluster = (old_off >> q->geom.cluster_bits) + c, v;
        r = qcow2_rc_get(img, q, cluster, &v);
        if (r == 0 && v > 0)
            r = set_existing(img, q, cluster, v - 1);
    }
    return r;
}

/* ---- allocation ---- */

/* First run of n clusters with refcount 0 at or after free_hint. */
static int find_free_run(struct img *img, struct qcow2 *q, uint64_t n, uint64_t *start)
{
    struct qcow2_writer *w = q->w;
    uint64_t c = w->free_hint, run = 0, first = c;
    while (run < n) {
        uint64_t i = c / w->rb_entries;
        if (block_missing(w, i)) {   /* a whole block's worth is free */
            uint64_t block_end = (i + 1) * w->rb_entries;
            if (run == 0)
                first = c;
            uint64_t take = block_end - c < n - run ? block_end - c : n - run;
            run += take;
            c += take;
            continue;
        }
        uint64_t v;
        int r = qcow2_rc_get(img, q, c, &v);
        if (r < 0)
            return r;
        if (v == 0) {
            if (run++ == 0)
                first = c;
        } else
            run = 0;
        c++;
    }
    *start = first;
    return 0;
}

static uint64_t count_missing(const struct qcow2_writer *w, uint64_t start, uint64_t n)
{
    uint64_t missing = 0;
    for (uint64_t i = start / w->rb_entries; i <= (start + n - 1) / w->rb_entries; i++)
        missing += block_missing(w, i);
    return missing;
}

/* A free run of n clusters, preceded by room for the refcount blocks that
 * the whole range lacks: *start is the run with that room, *blocks its size. */
static int find_run_with_blocks(struct img *img, struct qcow2 *q, uint64_t n, uint64_t *start,
                                uint64_t *blocks)
{
    struct qcow2_writer *w = q->w;
    uint64_t room = 0;
    for (;;) {
        int r = find_free_run(img, q, n + room, start);
        if (r < 0)
            return r;
        uint64_t last = (*start + room + n - 1) / w->rb_entries;
        if (last >= w->rt_entries) {
            /* The table must grow first; it takes clusters, so search again. */
            r = grow_table(img, q, last);
            if (r < 0)
                return r;
            continue;
        }
        uint64_t missing = count_missing(w, *start, room + n);
        if (missing <= room) {
            *blocks = missing;
            return 0;
        }
        room = missing;
    }
}

int qcow2_alloc_clusters(struct img *img, struct qcow2 *q, uint64_t n, uint64_t *host)
{
    struct qcow2_writer *w = q->w;
    uint64_t start, blocks;
    int r = find_run_with_blocks(img, q, n, &start, &blocks);
    if (r < 0)
        return r;
    if (start + blocks + n > (QCOW2_OFFSET_MASK >> q->geom.cluster_bits))
        return img_error(img, EFBIG, "the image file would pass the largest qcow2 offset");
    /* New blocks go first, then the run; all of them are counted once. */
    uint64_t placed = 0, end = start + blocks + n;
    for (uint64_t i = start / w->rb_entries; r == 0 && i <= (end - 1) / w->rb_entries; i++)
        if (block_missing(w, i) && placed < blocks)
            r = create_block(q, i, start + placed++);
    for (uint64_t c = start; r == 0 && c < end; c++) {
        if (c == start + placed)
            c = start + blocks;   /* room left over when fewer blocks were needed */
        r = set_existing(img, q, c, 1);
    }
    if (r < 0)
        return r;
    if (start == w->free_hint)
        w->free_hint = placed < blocks ? start + placed : end;
    *host = (start + blocks) << q->geom.cluster_bits;
    return 0;
}

int qcow2_alloc_cluster_at(struct img *img, struct qcow2 *q, uint64_t cluster, bool *got)
{
    uint64_t v;
    *got = false;
    /* Only where a block already counts it: this is an optimisation. */
    if (block_missing(q->w, cluster / q->w->rb_entries))
        return 0;
    int r = qcow2_rc_get(img, q, cluster, &v);
    if (r < 0 || v != 0)
        return r;
    r = set_existing(img, q, cluster, 1);
    *got = r == 0;
    return r;
}

/* ---- deferred drops ---- */

int qcow2_free_later(struct img *img, struct qcow2 *q, uint64_t off, uint64_t len)
{
    (void)img;
    struct qcow2_writer *w = q->w;
    if (len == 0)
        return 0;
    for (uint64_t c = off >> q->geom.cluster_bits; c <= (off + len - 1) >> q->geom.cluster_bits;
         c++) {
        if (w->n_pending == w->cap_pending) {
            size_t cap = w->cap_pending ? w->cap_pending * 2 : 256;
            uint64_t *p = realloc(w->pending, cap * sizeof(*p));
            if (!p)
                return -ENOMEM;
            w->pending = p;
            w->cap_pending = cap;
        }
        w->pending[w->n_pending++] = c;
    }
    return 0;
}

int qcow2_apply_pending(struct img *img, struct qcow2 *q)
{
    struct qcow2_writer *w = q->w;
    for (size_t k = 0; k < w->n_pending; k++) {
        uint64_t c = w->pending[k], v;
        int r = qcow2_rc_get(img, q, c, &v);
        if (r == 0 && v == 0)
            r = img_error(img, EIO, "refcount of cluster %llu would drop below zero",
                          (unsigned long long)c);
        if (r == 0)
            r = set_existing(img, q, c, v - 1);
        if (r < 0) {
            w->n_pending = 0;
            return r;
        }
        /* A freed cluster must not keep receiving packed compressed data. */
        if (v == 1 && w->comp_next && (w->comp_next >> q->geom.cluster_bits) == c)
            w->comp_next = 0;
    }
    w->n_pending = 0;
    return 0;
}

/* ---- writeback ---- */

int qcow2_rc_writeback(struct img *img, struct qcow2 *q)
{
    struct qcow2_writer *w = q->w;
    bool wrote = false;
    for (uint64_t i = 0; i < w->rt_entries; i++) {
        if (!w->rb[i].dirty)
            continue;
        int r = qcow2_pwrite(img, w->rb[i].data, q->cluster_size, w->rt[i], "refcount block");
        if (r < 0)
            return r;
        w->rb[i].dirty = false;
        wrote = true;
    }
    if (w->rt_dirty_hi > w->rt_dirty_lo) {
        /* A table entry may only name a block whose content is on disk. */
        int r = wrote ? qcow2_sync(img) : 0;
        uint64_t n = w->rt_dirty_hi - w->rt_dirty_lo;
        uint8_t *raw = malloc(n * 8);
        if (!raw)
            return -ENOMEM;
        for (uint64_t i = 0; i < n; i++)
            put_be64(raw + 8 * i, w->rt[w->rt_dirty_lo + i]);
        if (r == 0)
            r = qcow2_pwrite(img, raw, n * 8, w->rt_offset + w->rt_dirty_lo * 8,
                             "refcount table");
        free(raw);
        if (r < 0)
            return r;
        w->rt_dirty_lo = w->rt_dirty_hi = 0;
        wrote = true;
    }
    return wrote ? qcow2_sync(img) : 0;
}
