/* qcow2 writes: data, compressed clusters, zeros, discard, and flush.
 *
 * Crash safety.  Metadata is write-back cached (refcount blocks and table
 * in refcount.c, L2 tables in the L2 cache of map.c, the L1 table in q->l1)
 * and reaches the disk only in qcow2_flush_locked, in an order that keeps
 * every state the file passes through valid for `qemu-img check` (leaks
 * allowed, never a reference to a cluster whose refcount is too low):
 *
 *   1. refcount blocks (increments only: a drop is never in memory before
 *      step 4), sync; new refcount table entries, sync
 *   2. dirty L2 tables, sync: they point at clusters counted by 1; the sync
 *      of step 1 also made the data written into new clusters durable
 *   3. dirty L1 entries, sync: they point at L2 tables written by 2
 *   4. the queued reference drops (old compressed clusters, clusters
 *      replaced by copy-on-write or discarded, freed tables) are applied in
 *      memory; they are safe now that nothing on disk names those clusters,
 *      and they reach the disk with the next step 1 -- before that a crash
 *      leaks.
 *      A dropped cluster is reused only after this point.
 *   5. a final sync, so everything written so far is durable.
 *
 * Data goes straight to the file with pwrite: into a cluster that this
 * image alone owns (COPIED), or into a newly allocated cluster that nothing
 * on disk points to until step 2.  Clusters freed in memory are never
 * reused before step 4, so in-flight old tables never see their clusters
 * overwritten.  The refcount table grows synchronously (refcount.c: blocks
 * and new table, sync, header, sync), and L1 growth in resize works the
 * same way.  A flush runs at qcow2_flush (imgctl at the end of a command,
 * imgfs on fsync) and whenever half the L2 cache is dirty, so a writer
 * that never flushes still bounds its memory; what was written after the
 * last flush may be lost in a crash, everything before it is not.
 *
 * Locking: one writer at a time holds q->meta exclusively for a whole
 * request; map/read take it shared.  Compression runs before the lock. */
#include "qcow2.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bytes.h"

/* Full clusters allocated together in one write (one pwrite). */
#define QCOW2_MAX_RUN_CLUSTERS 8192u
/* Flush once this many references wait to be dropped. */
#define QCOW2_MAX_PENDING 65536u

#define ALL_SUBCLUSTERS 0xffffffffull

/* ---- small helpers ---- */

static uint64_t l2_index_of(const struct qcow2 *q, uint64_t guest)
{
    return (guest >> q->geom.cluster_bits) & ((1ull << q->l2_bits) - 1);
}

static uint64_t entry_at(const struct qcow2 *q, const struct qcow2_l2_slot *s, uint64_t idx)
{
    return get_be64(s->data + idx * q->entry_bytes);
}

static uint64_t bitmap_at(const struct qcow2 *q, const struct qcow2_l2_slot *s, uint64_t idx)
{
    return q->geom.extended_l2 ? get_be64(s->data + idx * q->entry_bytes + 8) : 0;
}

static void set_entry(struct qcow2 *q, struct qcow2_l2_slot *s, uint64_t idx, uint64_t entry,
                      uint64_t bitmap)
{
    put_be64(s->data + idx * q->entry_bytes, entry);
    if (q->geom.extended_l2)
        put_be64(s->data + idx * q->entry_bytes + 8, bitmap);
    qcow2_l2_mark_dirty(q, s);
}

static bool is_compressed(uint64_t entry) { return entry & QCOW2_OFLAG_COMPRESSED; }

static uint64_t host_of(uint64_t entry)
{
    return is_compressed(entry) ? 0 : entry & QCOW2_OFFSET_MASK;
}

/* Data can go straight into the entry's host cluster: this image owns it. */
static bool owned_in_place(uint64_t entry)
{
    return !is_compressed(entry) && host_of(entry) && (entry & QCOW2_OFLAG_COPIED);
}

/* Queue the drop of whatever host space an entry held. */
static int release_entry(struct img *img, struct qcow2 *q, uint64_t entry)
{
    if (is_compressed(entry)) {
        uint64_t off, len;
        qcow2_decode_compressed(q->geom.cluster_bits, entry, &off, &len);
        return qcow2_free_later(img, q, off, len);
    }
    uint64_t host = host_of(entry);
    return host ? qcow2_free_later(img, q, host, q->cluster_size) : 0;
}

static int writable(struct img *img, const struct qcow2 *q)
{
    if (!q->w)
        return img_error(img, EROFS, "image is opened read-only");
    if (q->w->broken)
        return img_error(img, EIO, "an earlier metadata write failed; reopen the image "
                         "(qemu-img check can repair leaks)");
    if (q->h.incompatible & QCOW2_INCOMPAT_DIRTY)
        return img_error(img, EROFS, "image is dirty (lazy refcounts); repair it with "
                         "check -r all before writing");
    return 0;
}

static int backing_error(struct img *img, int r)
{
    return img_error(img, -r, "backing file: %s", img->backing->errmsg);
}

/* ---- the current content of this layer (for copy-on-write) ---- */

static int read_backing(struct img *img, uint8_t *dst, size_t len, uint64_t off)
{
    struct img *b = img->backing;
    size_t n = 0;
    if (b && off < b->size)
        n = b->size - off < len ? (size_t)(b->size - off) : len;
    if (n) {
        int r = img_read(b, dst, n, off);
        if (r < 0)
            return backing_error(img, r);
    }
    memset(dst + n, 0, len - n);
    return 0;
}

/* Guest bytes [off, off+len) as a reader of this image would see them. */
static int read_current(struct img *img, struct qcow2 *q, uint8_t *dst, size_t len,
                        uint64_t off)
{
    while (len > 0) {
        struct qcow2_mapping m;
        int r = qcow2_lookup_locked(img, off, &m);
        if (r < 0)
            return r;
        unsigned bits = m.type == QCOW2_COMPRESSED ? q->geom.cluster_bits : q->unit_bits;
        uint64_t into = off & ((1ull << bits) - 1);
        size_t n = (1ull << bits) - into < len ? (size_t)((1ull << bits) - into) : len;
        switch (m.type) {
        case QCOW2_NORMAL:
            r = img_pread(img, q->data_fd, dst, n, m.host_off + into, "data");
            break;
        case QCOW2_COMPRESSED:
            r = qcow2_read_compressed(img, q, &m, dst, n, (size_t)(off & (q->cluster_size - 1)));
            break;
        case QCOW2_ZERO:
            memset(dst, 0, n);
            break;
        case QCOW2_UNALLOCATED:
            r = read_backing(img, dst, n, off);
            break;
        }
        if (r < 0)
            return r;
        dst += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* buf covers guest [start, start+span): new bytes p at [off, off+n), the
 * current content around them. */
static int merge_with_current(struct img *img, struct qcow2 *q, uint8_t *buf, uint64_t start,
                              size_t span, const uint8_t *p, uint64_t off, size_t n)
{
    int r = 0;
    if (off > start)
        r = read_current(img, q, buf, (size_t)(off - start), start);
    uint64_t end = off + n;
    if (r == 0 && end < start + span)
        r = read_current(img, q, buf + (end - start), (size_t)(start + span - end), end);
    memcpy(buf + (off - start), p, n);
    return r;
}

/* ---- L1 / L2 ---- */

static void mark_l1_dirty(struct qcow2_writer *w, uint32_t i)
{
    if (w->l1_dirty_hi == w->l1_dirty_lo) {
        w->l1_dirty_lo = i;
        w->l1_dirty_hi = i + 1;
        return;
    }
    if (i < w->l1_dirty_lo)
        w->l1_dirty_lo = i;
    if (i + 1 > w->l1_dirty_hi)
        w->l1_dirty_hi = i + 1;
}

/* The L2 table for guest offset `guest`, allocated when missing. */
static int l2_for_write(struct img *img, struct qcow2 *q, uint64_t guest,
                        struct qcow2_l2_slot **out)
{
    uint64_t i = guest >> (q->geom.cluster_bits + q->l2_bits);
    if (i >= q->l1_size)
        return img_error(img, EIO, "guest offset 0x%llx is beyond the L1 table",
                         (unsigned long long)guest);
    uint64_t l1e = q->l1[i], l2_off = l1e & QCOW2_OFFSET_MASK;
    if (l2_off == 0) {
        int r = qcow2_alloc_clusters(img, q, 1, &l2_off);
        if (r == 0)
            r = qcow2_l2_new(q, l2_off, out);
        if (r < 0)
            return r;
        q->l1[i] = l2_off | QCOW2_OFLAG_COPIED;
        mark_l1_dirty(q->w, (uint32_t)i);
        return 0;
    }
    if (l2_off & (q->cluster_size - 1))
        return img_error(img, EIO, "L2 table offset 0x%llx (L1 index %llu) is not cluster "
                         "aligned", (unsigned long long)l2_off, (unsigned long long)i);
    if (!(l1e & QCOW2_OFLAG_COPIED)) {
        /* Shared with a snapshot, or a flag another writer left unset. */
        uint64_t refs;
        int r = qcow2_rc_get(img, q, l2_off >> q->geom.cluster_bits, &refs);
        if (r < 0)
            return r;
        if (refs != 1)
            return img_error(img, ENOTSUP, "L2 table at 0x%llx is shared (refcount %llu); "
                             "writing shared tables is not supported",
                             (unsigned long long)l2_off, (unsigned long long)refs);
        q->l1[i] = l1e | QCOW2_OFLAG_COPIED;
        mark_l1_dirty(q->w, (uint32_t)i);
    }
    return qcow2_l2_get(img, q, l2_off, out);
}

/* ---- data writes ---- */

/* Full clusters from `off` on that go into owned clusters, contiguous on the
 * host: one pwrite. */
static int write_run_in_place(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                              uint64_t idx, uint64_t max, const uint8_t *p, uint64_t *clusters)
{
    uint64_t first = host_of(entry_at(q, s, idx)), k = 1;
    while (k < max && owned_in_place(entry_at(q, s, idx + k)) &&
           host_of(entry_at(q, s, idx + k)) == first + k * q->cluster_size)
        k++;
    int r = qcow2_pwrite(img, p, k * q->cluster_size, first, "data");
    for (uint64_t j = 0; r == 0 && j < k; j++) {
        uint64_t e = entry_at(q, s, idx + j), bm = bitmap_at(q, s, idx + j);
        uint64_t want = host_of(e) | QCOW2_OFLAG_COPIED;   /* drops a zero flag */
        uint64_t want_bm = q->geom.extended_l2 ? ALL_SUBCLUSTERS : 0;
        if (e != want || bm != want_bm)
            set_entry(q, s, idx + j, want, want_bm);
    }
    *clusters = k;
    return r;
}

/* Full clusters that need new host clusters: allocate them together. */
static int write_run_new(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                         uint64_t idx, uint64_t max, const uint8_t *p, uint64_t *clusters)
{
    uint64_t k = 1, host;
    while (k < max && !owned_in_place(entry_at(q, s, idx + k)))
        k++;
    int r = qcow2_alloc_clusters(img, q, k, &host);
    if (r == 0)
        r = qcow2_pwrite(img, p, k * q->cluster_size, host, "data");
    for (uint64_t j = 0; r == 0 && j < k; j++) {
        r = release_entry(img, q, entry_at(q, s, idx + j));
        set_entry(q, s, idx + j, (host + j * q->cluster_size) | QCOW2_OFLAG_COPIED,
                  q->geom.extended_l2 ? ALL_SUBCLUSTERS : 0);
    }
    *clusters = k;
    return r;
}

static int write_full_clusters(struct img *img, struct qcow2 *q, const uint8_t *p, uint64_t len,
                               uint64_t off, uint64_t *done)
{
    struct qcow2_l2_slot *s;
    int r = l2_for_write(img, q, off, &s);
    if (r < 0)
        return r;
    uint64_t idx = l2_index_of(q, off);
    uint64_t max = len >> q->geom.cluster_bits;
    if (max > (1ull << q->l2_bits) - idx)
        max = (1ull << q->l2_bits) - idx;
    if (max > QCOW2_MAX_RUN_CLUSTERS)
        max = QCOW2_MAX_RUN_CLUSTERS;
    uint64_t k = 0;
    if (owned_in_place(entry_at(q, s, idx)))
        r = write_run_in_place(img, q, s, idx, max, p, &k);
    else
        r = write_run_new(img, q, s, idx, max, p, &k);
    qcow2_l2_put(q, s);
    *done = k << q->geom.cluster_bits;
    return r;
}

/* A whole cluster rebuilt (copy-on-write) into a new host cluster. */
static int rewrite_cluster(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                           uint64_t idx, uint64_t cstart, const uint8_t *p, uint64_t off, size_t n)
{
    uint8_t *buf = q->w->scratch;
    uint64_t host;
    int r = merge_with_current(img, q, buf, cstart, q->cluster_size, p, off, n);
    if (r == 0)
        r = qcow2_alloc_clusters(img, q, 1, &host);
    if (r == 0)
        r = qcow2_pwrite(img, buf, q->cluster_size, host, "data");
    if (r == 0)
        r = release_entry(img, q, entry_at(q, s, idx));
    if (r == 0)
        set_entry(q, s, idx, host | QCOW2_OFLAG_COPIED,
                  q->geom.extended_l2 ? ALL_SUBCLUSTERS : 0);
    return r;
}

/* Part of a cluster with standard (64-bit) entries. */
static int write_part_standard(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                               uint64_t idx, uint64_t cstart, const uint8_t *p, uint64_t off,
                               size_t n)
{
    uint64_t e = entry_at(q, s, idx);
    if (!owned_in_place(e))
        return rewrite_cluster(img, q, s, idx, cstart, p, off, n);
    uint64_t host = host_of(e);
    if (!(e & QCOW2_OFLAG_ZERO))
        return qcow2_pwrite(img, p, n, host + (off - cstart), "data");
    /* Allocated but reading as zeros: the rest of the cluster must be zeros. */
    uint8_t *buf = q->w->scratch;
    memset(buf, 0, q->cluster_size);
    memcpy(buf + (off - cstart), p, n);
    int r = qcow2_pwrite(img, buf, q->cluster_size, host, "data");
    if (r == 0)
        set_entry(q, s, idx, host | QCOW2_OFLAG_COPIED, 0);
    return r;
}

/* Part of a cluster with extended entries: only the touched subclusters are
 * written, and only partly touched ones are completed from what they read. */
static int write_part_extended(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                               uint64_t idx, uint64_t cstart, const uint8_t *p, uint64_t off,
                               size_t n)
{
    uint64_t e = entry_at(q, s, idx), bm = bitmap_at(q, s, idx);
    if (is_compressed(e))
        return rewrite_cluster(img, q, s, idx, cstart, p, off, n);
    uint64_t host = host_of(e);
    if (host && !(e & QCOW2_OFLAG_COPIED))
        return img_error(img, ENOTSUP, "cluster at 0x%llx is shared; writing shared "
                         "clusters is not supported", (unsigned long long)host);
    unsigned sub_bits = q->geom.cluster_bits - 5;
    unsigned first = (unsigned)((off - cstart) >> sub_bits);
    unsigned last = (unsigned)((off - cstart + n - 1) >> sub_bits);
    uint64_t start = cstart + ((uint64_t)first << sub_bits);
    size_t span = (size_t)(last - first + 1) << sub_bits;
    uint8_t *buf = q->w->scratch;
    int r = merge_with_current(img, q, buf, start, span, p, off, n);
    bool fresh = host == 0;
    if (r == 0 && fresh)
        r = qcow2_alloc_clusters(img, q, 1, &host);
    if (r == 0)
        r = qcow2_pwrite(img, buf, span, host + (start - cstart), "data");
    if (r < 0)
        return r;
    uint64_t bits = ((ALL_SUBCLUSTERS >> (31 - last)) >> first) << first;
    bm = (bm | bits) & ~(bits << 32);
    set_entry(q, s, idx, host | QCOW2_OFLAG_COPIED, bm);
    return 0;
}

static int write_part(struct img *img, struct qcow2 *q, const uint8_t *p, uint64_t off, size_t n)
{
    uint64_t cstart = off & ~((uint64_t)q->cluster_size - 1);
    struct qcow2_l2_slot *s;
    int r = l2_for_write(img, q, off, &s);
    if (r < 0)
        return r;
    uint64_t idx = l2_index_of(q, off);
    if (q->geom.extended_l2)
        r = write_part_extended(img, q, s, idx, cstart, p, off, n);
    else
        r = write_part_standard(img, q, s, idx, cstart, p, off, n);
    qcow2_l2_put(q, s);
    return r;
}

/* Flush early when the caches hold too much that waits for the disk. */
static int maybe_writeback(struct img *img, struct qcow2 *q)
{
    if (q->cache.dirty * 2 < q->cache.max && q->w->n_pending < QCOW2_MAX_PENDING)
        return 0;
    return qcow2_flush_locked(img, q);
}

static int write_locked(struct img *img, struct qcow2 *q, const uint8_t *p, size_t len,
                        uint64_t off)
{
    while (len > 0) {
        uint64_t into = off & (q->cluster_size - 1), done;
        int r;
        if (into == 0 && len >= q->cluster_size) {
            r = write_full_clusters(img, q, p, len, off, &done);
        } else {
            done = q->cluster_size - into < len ? q->cluster_size - into : len;
            r = write_part(img, q, p, off, (size_t)done);
        }
        if (r == 0)
            r = maybe_writeback(img, q);
        if (r < 0)
            return r;
        p += done;
        off += done;
        len -= (size_t)done;
    }
    return 0;
}

static int check_range(struct img *img, uint64_t off, uint64_t len)
{
    if (off > img->size || len > img->size - off)
        return img_error(img, EINVAL, "write of 0x%llx+0x%llx passes the virtual size",
                         (unsigned long long)off, (unsigned long long)len);
    return 0;
}

int qcow2_write(struct img *img, const void *buf, size_t len, uint64_t off)
{
    struct qcow2 *q = img->priv;
    int r = writable(img, q);
    if (r == 0)
        r = check_range(img, off, len);
    if (r < 0)
        return r;
    pthread_rwlock_wrlock(&q->meta);
    r = write_locked(img, q, buf, len, off);
    pthread_rwlock_unlock(&q->meta);
    return r;
}

/* ---- compressed clusters ---- */

/* `len` bytes for a compressed stream, packed after the previous one (and
 * spilling into the next cluster when that one is free), else in a new
 * cluster.  Every host cluster the stream touches gains one reference. */
static int alloc_compressed(struct img *img, struct qcow2 *q, size_t len, uint64_t *out)
{
    struct qcow2_writer *w = q->w;
    uint64_t at = w->comp_next, cluster = at >> q->geom.cluster_bits;
    uint64_t last = (at + len - 1) >> q->geom.cluster_bits;
    uint64_t refs = 0;
    int r = at ? qcow2_rc_get(img, q, cluster, &refs) : 0;
    if (r < 0)
        return r;
    bool packed = at && refs > 0 && refs < w->rc_max;
    if (packed && last != cluster)
        r = qcow2_alloc_cluster_at(img, q, last, &packed);
    if (r == 0 && packed)
        r = qcow2_rc_set(img, q, cluster, refs + 1);
    if (r == 0 && !packed)
        r = qcow2_alloc_clusters(img, q, 1, &at);
    if (r < 0)
        return r;
    *out = at;
    w->comp_next = at + len;
    if ((w->comp_next & (q->cluster_size - 1)) == 0)
        w->comp_next = 0;   /* the next cluster is not ours */
    return 0;
}

static uint64_t compressed_entry(const struct qcow2 *q, uint64_t at, size_t len)
{
    unsigned x = 62 - (q->geom.cluster_bits - 8);
    uint64_t extra = ((at + len - 1) >> 9) - (at >> 9);
    return QCOW2_OFLAG_COMPRESSED | (extra << x) | at;
}

static int store_compressed(struct img *img, struct qcow2 *q, const uint8_t *stream, size_t len,
                            uint64_t off)
{
    struct qcow2_l2_slot *s;
    uint64_t at;
    int r = l2_for_write(img, q, off, &s);
    if (r < 0)
        return r;
    uint64_t idx = l2_index_of(q, off);
    r = alloc_compressed(img, q, len, &at);
    if (r == 0)
        r = qcow2_pwrite(img, stream, len, at, "compressed cluster");
    if (r == 0) {
        qcow2_zcache_forget(q, at);
        r = release_entry(img, q, entry_at(q, s, idx));
    }
    if (r == 0)
        set_entry(q, s, idx, compressed_entry(q, at, len), 0);
    qcow2_l2_put(q, s);
    return r == 0 ? maybe_writeback(img, q) : r;
}

/* Compress one cluster into `out` (cluster_size - 1 bytes of room, as
 * QEMU: a stream no shorter than the data is not worth it).  Returns the
 * stream length, 0 when it does not shrink, or -errno. */
static ssize_t compress_cluster(struct img *img, struct qcow2 *q, const void *buf, size_t len,
                                uint8_t *out, uint8_t *padded)
{
    const void *in = buf;
    if (len < q->cluster_size) {   /* the short last cluster reads as zeros after its end */
        memcpy(padded, buf, len);
        memset(padded + len, 0, q->cluster_size - len);
        in = padded;
    }
    ssize_t n = compress_bounded(q->decompress, in, q->cluster_size, out, q->cluster_size - 1);
    if (n == -ENOSPC)
        return 0;
    if (n < 0)
        return img_error(img, (int)-n, "cannot compress the cluster at guest offset");
    return n;
}

int qcow2_write_compressed(struct img *img, const void *buf, size_t len, uint64_t off)
{
    struct qcow2 *q = img->priv;
    int r = writable(img, q);
    if (r == 0)
        r = check_range(img, off, len);
    if (r == 0 && ((off & (q->cluster_size - 1)) || len == 0 || len > q->cluster_size ||
                   (len < q->cluster_size && off + len != img->size)))
        r = img_error(img, EINVAL, "a compressed write must be one whole cluster "
                      "(0x%llx+0x%zx)", (unsigned long long)off, len);
    if (r < 0)
        return r;
    uint8_t *out = malloc(q->cluster_size), *padded = malloc(q->cluster_size);
    ssize_t n = out && padded ? compress_cluster(img, q, buf, len, out, padded) : -ENOMEM;
    free(padded);
    pthread_rwlock_wrlock(&q->meta);
    if (n > 0)
        r = store_compressed(img, q, out, (size_t)n, off);
    else if (n == 0)
        r = write_locked(img, q, buf, len, off);   /* does not shrink: as QEMU, plain */
    else
        r = (int)n;
    pthread_rwlock_unlock(&q->meta);
    free(out);
    return r;
}

/* ---- zeros ---- */

static bool has_backing(const struct img *img) { return img->backing_file != NULL; }

/* A whole cluster made to read as zeros. */
static int zero_cluster(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s, uint64_t idx,
                        bool may_unmap)
{
    uint64_t e = entry_at(q, s, idx), bm = bitmap_at(q, s, idx);
    bool keep = !may_unmap && owned_in_place(e);
    uint64_t new_e, new_bm = 0;
    if (q->geom.extended_l2) {
        new_e = keep ? e : 0;
        new_bm = ALL_SUBCLUSTERS << 32;
    } else if (q->geom.v2) {
        new_e = 0;   /* unallocated reads as zeros: the caller made sure there is no backing */
        keep = false;
    } else {
        new_e = (keep ? host_of(e) | QCOW2_OFLAG_COPIED : 0) | QCOW2_OFLAG_ZERO;
    }
    if (new_e == e && new_bm == bm)
        return 0;
    int r = keep ? 0 : release_entry(img, q, e);
    if (r == 0)
        set_entry(q, s, idx, new_e, new_bm);
    return r;
}

/* Extended L2: whole subclusters inside [off, off+n) get the zero bit. */
static int zero_subclusters(struct img *img, struct qcow2 *q, uint64_t off, size_t n,
                            const uint8_t *zeros)
{
    unsigned sub_bits = q->geom.cluster_bits - 5;
    uint64_t sc = 1ull << sub_bits;
    uint64_t a = (off + sc - 1) & ~(sc - 1), b = (off + n) & ~(sc - 1);
    int r = 0;
    if (a >= b)   /* no whole subcluster */
        return write_locked(img, q, zeros, n, off);
    if (a > off)
        r = write_locked(img, q, zeros, (size_t)(a - off), off);
    if (r == 0 && b < off + n)
        r = write_locked(img, q, zeros, (size_t)(off + n - b), b);
    struct qcow2_l2_slot *s;
    if (r == 0)
        r = l2_for_write(img, q, off, &s);
    if (r < 0)
        return r;
    uint64_t idx = l2_index_of(q, off), e = entry_at(q, s, idx);
    if (is_compressed(e)) {   /* no subclusters: rewrite it whole */
        qcow2_l2_put(q, s);
        return write_locked(img, q, zeros, (size_t)(b - a), a);
    }
    uint64_t cstart = off & ~((uint64_t)q->cluster_size - 1);
    unsigned first = (unsigned)((a - cstart) >> sub_bits), last = (unsigned)((b - cstart - 1) >> sub_bits);
    uint64_t bits = ((ALL_SUBCLUSTERS >> (31 - last)) >> first) << first;
    uint64_t bm = (bitmap_at(q, s, idx) & ~bits) | (bits << 32);
    set_entry(q, s, idx, e, bm);
    qcow2_l2_put(q, s);
    return 0;
}

/* Skip work that is already done: no backing file and nothing allocated. */
static bool reads_zero_already(struct img *img, struct qcow2 *q, uint64_t off, uint64_t *skip)
{
    unsigned shift = q->geom.cluster_bits + q->l2_bits;
    uint64_t i = off >> shift;
    if (has_backing(img) || i >= q->l1_size || (q->l1[i] & QCOW2_OFFSET_MASK))
        return false;
    *skip = ((i + 1) << shift) - off;
    return true;
}

static int zero_piece(struct img *img, struct qcow2 *q, uint64_t off, uint64_t len, bool may_unmap,
                      const uint8_t *zeros, uint64_t *done)
{
    uint64_t into = off & (q->cluster_size - 1);
    uint64_t n = q->cluster_size - into < len ? q->cluster_size - into : len;
    *done = n;
    if (reads_zero_already(img, q, off, done)) {
        if (*done > len)
            *done = len;
        return 0;
    }
    bool whole = into == 0 && (n == q->cluster_size || off + n >= img->size);
    if (q->geom.v2 && has_backing(img))
        return write_locked(img, q, zeros, (size_t)n, off);   /* no zero flag in v2 */
    if (!whole && q->geom.extended_l2)
        return zero_subclusters(img, q, off, (size_t)n, zeros);
    if (!whole)
        return write_locked(img, q, zeros, (size_t)n, off);
    struct qcow2_l2_slot *s;
    int r = l2_for_write(img, q, off, &s);
    if (r < 0)
        return r;
    r = zero_cluster(img, q, s, l2_index_of(q, off), may_unmap);
    qcow2_l2_put(q, s);
    return r;
}

int qcow2_write_zeroes(struct img *img, uint64_t off, uint64_t len, bool may_unmap)
{
    struct qcow2 *q = img->priv;
    int r = writable(img, q);
    if (r == 0)
        r = check_range(img, off, len);
    if (r < 0)
        return r;
    uint8_t *zeros = calloc(1, q->cluster_size);
    if (!zeros)
        return -ENOMEM;
    pthread_rwlock_wrlock(&q->meta);
    while (r == 0 && len > 0) {
        uint64_t done;
        r = zero_piece(img, q, off, len, may_unmap, zeros, &done);
        if (r == 0)
            r = maybe_writeback(img, q);
        off += done;
        len -= done;
    }
    pthread_rwlock_unlock(&q->meta);
    free(zeros);
    return r;
}

/* ---- discard ----
 *
 * A discarded cluster's entry becomes 0 (unallocated: the backing chain
 * answers again, or zeros without one) and its host space goes through
 * release_entry, so the reference is dropped only at step 4 of a flush,
 * once the table without it is on disk: a kill in between leaks, never
 * leaves an entry naming a free cluster.  Only whole clusters are
 * discarded (whole subclusters with extended L2), as qemu does; the
 * partial clusters at the edges keep what they hold.  L2 tables are kept
 * even when they end up empty, and the file does not shrink: freed
 * clusters are reused by later allocations. */

/* The L2 table of `guest`, or NULL when there is none: nothing to discard
 * there, and allocating a table for it would only waste a cluster. */
static int l2_if_present(struct img *img, struct qcow2 *q, uint64_t guest,
                         struct qcow2_l2_slot **out)
{
    uint64_t i = guest >> (q->geom.cluster_bits + q->l2_bits);
    *out = NULL;
    if (i < q->l1_size && (q->l1[i] & QCOW2_OFFSET_MASK) == 0)
        return 0;
    return l2_for_write(img, q, guest, out);   /* also names a bad L1 entry */
}

static int discard_cluster(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                           uint64_t idx)
{
    uint64_t e = entry_at(q, s, idx);
    if (e == 0 && bitmap_at(q, s, idx) == 0)
        return 0;
    int r = release_entry(img, q, e);
    if (r == 0)
        set_entry(q, s, idx, 0, 0);
    return r;
}

/* Extended L2: subclusters first..last lose their allocation and zero bits;
 * the host cluster is released once no subcluster is allocated in it. */
static int discard_subclusters(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                               uint64_t idx, unsigned first, unsigned last)
{
    uint64_t e = entry_at(q, s, idx), bm = bitmap_at(q, s, idx);
    if (is_compressed(e))
        return 0;   /* a compressed cluster has no subclusters: only whole */
    uint64_t bits = ((ALL_SUBCLUSTERS >> (31 - last)) >> first) << first;
    uint64_t new_bm = bm & ~(bits | bits << 32), new_e = e;
    int r = 0;
    if (host_of(e) && (new_bm & ALL_SUBCLUSTERS) == 0) {
        r = release_entry(img, q, e);
        new_e = 0;   /* zero bits left over need no host cluster */
    }
    if (r == 0 && (new_e != e || new_bm != bm))
        set_entry(q, s, idx, new_e, new_bm);
    return r;
}

/* [a, b) inside the cluster [cstart, cend); cend is the virtual end for a
 * short last cluster, which then counts as whole when b reaches it. */
static int discard_in_cluster(struct img *img, struct qcow2 *q, struct qcow2_l2_slot *s,
                              uint64_t cstart, uint64_t cend, uint64_t a, uint64_t b)
{
    uint64_t idx = l2_index_of(q, cstart);
    if (a == cstart && b == cend)
        return discard_cluster(img, q, s, idx);
    if (!q->geom.extended_l2)
        return 0;   /* part of a cluster: left as it is */
    unsigned sub_bits = q->geom.cluster_bits - 5;
    uint64_t sc = 1ull << sub_bits;
    uint64_t from = (a - cstart + sc - 1) & ~(sc - 1);
    uint64_t to = b == cend ? q->cluster_size : (b - cstart) & ~(sc - 1);
    if (from >= to)
        return 0;
    return discard_subclusters(img, q, s, idx, (unsigned)(from >> sub_bits),
                               (unsigned)((to >> sub_bits) - 1));
}

/* The part of [off, off+len) that one L2 table maps; *done = its length. */
static int discard_in_table(struct img *img, struct qcow2 *q, uint64_t off, uint64_t len,
                            uint64_t *done)
{
    uint64_t span = 1ull << (q->geom.cluster_bits + q->l2_bits);
    uint64_t n = span - (off & (span - 1));
    *done = n < len ? n : len;
    struct qcow2_l2_slot *s;
    int r = l2_if_present(img, q, off, &s);
    if (r < 0 || !s)
        return r;
    uint64_t end = off + *done;
    for (uint64_t at = off; r == 0 && at < end;) {
        uint64_t cstart = at & ~((uint64_t)q->cluster_size - 1);
        uint64_t cend = cstart + q->cluster_size < img->size ? cstart + q->cluster_size
                                                              : img->size;
        uint64_t b = end < cend ? end : cend;
        r = discard_in_cluster(img, q, s, cstart, cend, at, b);
        at = b;
    }
    qcow2_l2_put(q, s);
    return r == 0 ? maybe_writeback(img, q) : r;
}

int qcow2_discard(struct img *img, uint64_t off, uint64_t len)
{
    struct qcow2 *q = img->priv;
    int r = writable(img, q);
    if (r == 0)
        r = check_range(img, off, len);
    if (r < 0)
        return r;
    pthread_rwlock_wrlock(&q->meta);
    while (r == 0 && len > 0) {
        uint64_t done;
        r = discard_in_table(img, q, off, len, &done);
        off += done;
        len -= done;
    }
    pthread_rwlock_unlock(&q->meta);
    return r;
}

/* ---- preallocation (create -o preallocation=metadata) ---- */

int qcow2_preallocate_range(struct img *img, struct qcow2 *q, uint64_t off, uint64_t len,
                            uint64_t *end)
{
    struct qcow2_l2_slot *s;
    int r = l2_for_write(img, q, off, &s);
    if (r < 0)
        return r;
    uint64_t idx = l2_index_of(q, off);
    uint64_t n = (len + q->cluster_size - 1) >> q->geom.cluster_bits, host;
    r = qcow2_alloc_clusters(img, q, n, &host);
    for (uint64_t j = 0; r == 0 && j < n; j++)
        set_entry(q, s, idx + j, (host + (j << q->geom.cluster_bits)) | QCOW2_OFLAG_COPIED,
                  q->geom.extended_l2 ? ALL_SUBCLUSTERS : 0);
    qcow2_l2_put(q, s);
    if (r == 0 && host + (n << q->geom.cluster_bits) > *end)
        *end = host + (n << q->geom.cluster_bits);
    return r == 0 ? maybe_writeback(img, q) : r;
}

/* ---- flush ---- */

static int write_l1_dirty(struct img *img, struct qcow2 *q, bool *wrote)
{
    struct qcow2_writer *w = q->w;
    *wrote = false;
    if (w->l1_dirty_hi <= w->l1_dirty_lo)
        return 0;
    uint32_t n = w->l1_dirty_hi - w->l1_dirty_lo;
    uint8_t *raw = malloc((size_t)n * 8);
    if (!raw)
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        put_be64(raw + 8 * (size_t)i, q->l1[w->l1_dirty_lo + i]);
    int r = qcow2_pwrite(img, raw, (size_t)n * 8, q->h.l1_table_offset + 8ull * w->l1_dirty_lo,
                         "L1 table");
    free(raw);
    if (r == 0) {
        w->l1_dirty_lo = w->l1_dirty_hi = 0;
        *wrote = true;
    }
    return r;
}

static int flush_steps(struct img *img, struct qcow2 *q)
{
    int r = qcow2_rc_writeback(img, q);                   /* 1 */
    if (r < 0)
        return r;
    int tables = qcow2_l2_writeback(img, q);              /* 2 */
    if (tables < 0)
        return tables;
    if (tables > 0 && (r = qcow2_sync(img)) < 0)
        return r;
    bool wrote;
    r = write_l1_dirty(img, q, &wrote);                   /* 3 */
    if (r == 0 && wrote)
        r = qcow2_sync(img);
    if (r == 0 && q->w->n_pending) {                      /* 4 */
        r = qcow2_apply_pending(img, q);
        if (r == 0)
            r = qcow2_rc_writeback(img, q);
    }
    return r == 0 ? qcow2_sync(img) : r;                  /* 5 */
}

int qcow2_flush_locked(struct img *img, struct qcow2 *q)
{
    if (q->w->broken)
        return img_error(img, EIO, "an earlier metadata write failed");
    int r = flush_steps(img, q);
    if (r < 0)
        q->w->broken = true;   /* memory and disk may now disagree */
    return r;
}

int qcow2_flush(struct img *img)
{
    struct qcow2 *q = img->priv;
    if (!q->w)
        return 0;
    pthread_rwlock_wrlock(&q->meta);
    int r = qcow2_flush_locked(img, q);
    pthread_rwlock_unlock(&q->meta);
    return r;
}

/* ---- opening for writing ---- */

static int refuse_unsupported(struct img *img, const struct qcow2 *q)
{
    if (q->geom.data_file)
        return img_error(img, ENOTSUP, "writing images with an external data file is not "
                         "supported");
    if (q->h.nb_snapshots)
        return img_error(img, ENOTSUP, "writing images with internal snapshots is not "
                         "supported (%u snapshots)", q->h.nb_snapshots);
    return 0;
}

/* A writer that does not know an autoclear feature must clear its bit, so
 * that readers know the extension (e.g. bitmaps) is stale. */
static int clear_autoclear(struct img *img, struct qcow2 *q)
{
    if (q->h.version < 3 || q->h.autoclear == 0)
        return 0;
    uint8_t zero[8] = { 0 };
    int r = qcow2_pwrite(img, zero, sizeof(zero), 88, "header");
    if (r == 0)
        r = qcow2_sync(img);
    if (r == 0)
        q->h.autoclear = 0;
    return r;
}

int qcow2_open_writer(struct img *img, struct qcow2 *q)
{
    int r = refuse_unsupported(img, q);
    if (r == 0)
        r = qcow2_writer_init(img, q);
    if (r == 0)
        r = clear_autoclear(img, q);
    return r;
}
