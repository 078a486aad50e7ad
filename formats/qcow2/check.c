/* qcow2 check: count the references to every host cluster (header, L1 and
 * L2 tables, data and compressed spans, refcount table and blocks,
 * snapshot tables), compare with the stored refcounts, check the COPIED
 * flags, and repair what is safe: leaks (drop the refcount to the count
 * of references) and, with "all", refcounts that are too low and wrong
 * COPIED flags.  Messages and counts follow qemu-img check. */
#include "qcow2.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bytes.h"

/* QEMU's limits for the snapshot table. */
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_SNAPSHOT_HEADER 40u
#define QCOW2_MAX_SNAPSHOT_TABLE (64u << 20)

struct checker {
    struct img *img;
    struct qcow2 *q;
    struct img_check *res;
    unsigned repair;
    uint64_t file_size;    /* of the image file when the check began */
    uint16_t *refs;        /* references seen per host cluster, saturating */
    uint64_t n;            /* clusters refs covers */
    bool refs_full;        /* a reference lay past QCOW2_CHECK_MAX_CLUSTERS */
};

/* A finding, as the core hands it on to imgctl. */
#define report(ck, ...) img_check_report((ck)->res, __VA_ARGS__)

static int grow_refs(struct checker *ck, uint64_t need)
{
    if (need > QCOW2_CHECK_MAX_CLUSTERS) {
        if (!ck->refs_full)
            report(ck, "ERROR reference to cluster %llu is beyond what check can count",
                   (unsigned long long)need - 1);
        ck->refs_full = true;
        ck->res->check_errors++;
        return -EFBIG;
    }
    uint64_t n = need > ck->n * 2 ? need : ck->n * 2;
    if (n > QCOW2_CHECK_MAX_CLUSTERS)
        n = QCOW2_CHECK_MAX_CLUSTERS;
    uint16_t *p = realloc(ck->refs, n * sizeof(*p));
    if (!p)
        return -ENOMEM;
    memset(p + ck->n, 0, (n - ck->n) * sizeof(*p));
    ck->refs = p;
    ck->n = n;
    return 0;
}

/* One reference to every cluster touched by [off, off+len). */
static int add_refs(struct checker *ck, uint64_t off, uint64_t len)
{
    if (len == 0)
        return 0;
    /* A region a cluster or more past the end of the file is corrupt, not
     * counted (as qemu): counting it would size the table by a number any
     * image can write, and walk it cluster by cluster. */
    uint64_t end = off + len;
    if (end < off || (end > ck->file_size && end - ck->file_size >= ck->q->cluster_size)) {
        report(ck, "ERROR: counting reference for region exceeding the end of the file by one "
               "cluster or more: offset 0x%llx size 0x%llx", (unsigned long long)off,
               (unsigned long long)len);
        ck->res->corruptions++;
        return 0;
    }
    unsigned bits = ck->q->geom.cluster_bits;
    uint64_t last = (off + len - 1) >> bits;
    if (last >= ck->n) {
        int r = grow_refs(ck, last + 1);
        if (r == -EFBIG)
            return 0;   /* counted as a check error */
        if (r < 0)
            return r;
    }
    for (uint64_t c = off >> bits; c <= last; c++)
        if (ck->refs[c] < UINT16_MAX)
            ck->refs[c]++;
    return 0;
}

/* ---- tables ---- */

struct l2_walk {
    bool active;                 /* the current L1: fragmentation info */
    uint64_t next_contiguous;
};

static int check_compressed(struct checker *ck, uint64_t entry)
{
    uint64_t off, len;
    qcow2_decode_compressed(ck->q->geom.cluster_bits, entry, &off, &len);
    if (entry & QCOW2_OFLAG_COPIED) {
        report(ck, "ERROR: coffset=0x%llx: Compressed cluster entry has the COPIED flag set",
               (unsigned long long)off);
        ck->res->corruptions++;
    }
    /* The span as sectors: from the sector of the offset on. */
    return add_refs(ck, off & ~511ull, (off & 511) + len);
}

static int check_entry(struct checker *ck, struct l2_walk *wk, uint64_t entry, uint64_t bitmap)
{
    const struct qcow2 *q = ck->q;
    struct img_check *res = ck->res;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        if (wk->active) {
            res->allocated_clusters++;
            res->compressed_clusters++;
            res->fragmented_clusters++;
        }
        return check_compressed(ck, entry);
    }
    uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32);
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    if (entry & QCOW2_L2E_RESERVED) {
        report(ck, "ERROR found L2 entry with reserved bits set: 0x%016llx",
               (unsigned long long)entry);
        res->corruptions++;
    }
    if (q->geom.extended_l2 && (alloc & zero)) {
        report(ck, "ERROR: Invalid cluster entry 0x%016llx (subclusters both allocated and "
               "zero)", (unsigned long long)entry);
        res->corruptions++;
    }
    if (!host) {
        if (q->geom.extended_l2 && alloc) {
            report(ck, "ERROR: Unallocated cluster entry 0x%016llx has allocated subclusters",
                   (unsigned long long)entry);
            res->corruptions++;
        }
        return 0;
    }
    if (host & (q->cluster_size - 1)) {
        report(ck, "ERROR offset=%llx: Cluster is not properly aligned; L2 entry corrupted.",
               (unsigned long long)host);
        res->corruptions++;
        return 0;
    }
    if (wk->active) {
        res->allocated_clusters++;
        if (wk->next_contiguous && host != wk->next_contiguous)
            res->fragmented_clusters++;
        wk->next_contiguous = host + q->cluster_size;
    }
    return q->geom.data_file ? 0 : add_refs(ck, host, q->cluster_size);
}

static int check_l2(struct checker *ck, uint64_t l2_off, bool active)
{
    struct qcow2 *q = ck->q;
    struct qcow2_l2_slot *s;
    int r = qcow2_l2_get(ck->img, q, l2_off, &s);
    if (r < 0) {
        report(ck, "ERROR: cannot read L2 table at 0x%llx: %s", (unsigned long long)l2_off,
               ck->img->errmsg);
        ck->res->check_errors++;
        return 0;
    }
    struct l2_walk wk = { .active = active };
    for (uint64_t i = 0; r == 0 && i < (1ull << q->l2_bits); i++) {
        const uint8_t *e = s->data + i * q->entry_bytes;
        r = check_entry(ck, &wk, get_be64(e), q->geom.extended_l2 ? get_be64(e + 8) : 0);
    }
    qcow2_l2_put(q, s);
    return r;
}

static int check_l1(struct checker *ck, const uint64_t *l1, uint32_t size, bool active)
{
    struct qcow2 *q = ck->q;
    for (uint32_t i = 0; i < size; i++) {
        uint64_t l2_off = l1[i] & QCOW2_OFFSET_MASK;
        if (l1[i] & QCOW2_L1E_RESERVED) {
            report(ck, "ERROR found L1 entry with reserved bits set: 0x%016llx",
                   (unsigned long long)l1[i]);
            ck->res->corruptions++;
        }
        if (!l2_off)
            continue;
        if (l2_off & (q->cluster_size - 1)) {
            report(ck, "ERROR l2_offset=%llx: Table is not cluster aligned; L1 entry "
                   "corrupted", (unsigned long long)l2_off);
            ck->res->corruptions++;
            continue;
        }
        int r = add_refs(ck, l2_off, q->cluster_size);
        if (r == 0)
            r = check_l2(ck, l2_off, active);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- snapshots (counted, never written) ---- */

static int check_snapshot_l1(struct checker *ck, uint64_t l1_off, uint32_t l1_size)
{
    if (l1_size == 0)
        return 0;
    if (l1_size > QCOW2_MAX_L1_BYTES / 8 || (l1_off & (ck->q->cluster_size - 1))) {
        report(ck, "ERROR snapshot L1 table at 0x%llx (%u entries) is invalid",
               (unsigned long long)l1_off, l1_size);
        ck->res->corruptions++;
        return 0;
    }
    uint8_t *raw = malloc((size_t)l1_size * 8);
    uint64_t *l1 = malloc((size_t)l1_size * 8);
    int r = raw && l1 ? 0 : -ENOMEM;
    if (r == 0 && img_pread(ck->img, ck->img->fd, raw, (size_t)l1_size * 8, l1_off,
                            "snapshot L1 table") < 0) {
        report(ck, "ERROR: %s", ck->img->errmsg);
        ck->res->check_errors++;
        l1_size = 0;
    }
    for (uint32_t i = 0; r == 0 && i < l1_size; i++)
        l1[i] = get_be64(raw + 8 * (size_t)i);
    if (r == 0)
        r = add_refs(ck, l1_off, (uint64_t)l1_size * 8);
    if (r == 0)
        r = check_l1(ck, l1, l1_size, false);
    free(raw);
    free(l1);
    return r;
}

static int check_snapshots(struct checker *ck)
{
    const struct qcow2_header *h = &ck->q->h;
    if (h->nb_snapshots == 0)
        return 0;
    if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS || (h->snapshots_offset & 7)) {
        report(ck, "ERROR snapshot table (%u entries at 0x%llx) is invalid", h->nb_snapshots,
               (unsigned long long)h->snapshots_offset);
        ck->res->check_errors++;
        return 0;
    }
    uint64_t pos = h->snapshots_offset;
    for (uint32_t i = 0; i < h->nb_snapshots; i++) {
        uint8_t e[QCOW2_SNAPSHOT_HEADER];
        if (pos - h->snapshots_offset > QCOW2_MAX_SNAPSHOT_TABLE ||
            img_pread(ck->img, ck->img->fd, e, sizeof(e), pos, "snapshot table") < 0) {
            report(ck, "ERROR: snapshot table cannot be read");
            ck->res->check_errors++;
            return 0;
        }
        uint64_t entry_len = QCOW2_SNAPSHOT_HEADER + (uint64_t)get_be32(e + 36) +
                             get_be16(e + 12) + get_be16(e + 14);
        pos += (entry_len + 7) & ~7ull;
        int r = check_snapshot_l1(ck, get_be64(e), get_be32(e + 8));
        if (r < 0)
            return r;
    }
    ck->q->snapshots_size = pos - h->snapshots_offset;
    return add_refs(ck, h->snapshots_offset, ck->q->snapshots_size);
}

/* ---- refcount structures ---- */

static int check_refcount_structures(struct checker *ck)
{
    struct qcow2 *q = ck->q;
    struct qcow2_writer *w = q->w;
    int r = add_refs(ck, w->rt_offset, (uint64_t)w->rt_clusters << q->geom.cluster_bits);
    for (uint64_t i = 0; r == 0 && i < w->rt_entries; i++) {
        uint64_t off = w->rt[i] & QCOW2_REFT_OFFSET_MASK;
        if (!off)
            continue;
        if (off & (q->cluster_size - 1)) {
            report(ck, "ERROR refcount block %llu is not cluster aligned; refcount table entry "
                   "corrupted", (unsigned long long)i);
            ck->res->corruptions++;
            continue;
        }
        if (!qcow2_fits(ck->img->fd, &q->file_size, off + q->cluster_size)) {
            report(ck, "ERROR refcount block %llu is outside image", (unsigned long long)i);
            ck->res->corruptions++;
            continue;
        }
        r = add_refs(ck, off, q->cluster_size);
    }
    return r;
}

/* ---- comparing ---- */

static void compare_one(struct checker *ck, uint64_t c, uint64_t *highest)
{
    struct img_check *res = ck->res;
    uint64_t stored;
    if (qcow2_rc_get(ck->img, ck->q, c, &stored) < 0) {
        report(ck, "Can't get refcount for cluster %llu: %s", (unsigned long long)c,
               ck->img->errmsg);
        res->check_errors++;
        return;
    }
    uint64_t refs = c < ck->n ? ck->refs[c] : 0;
    if (stored || refs)
        *highest = c;
    if (stored == refs)
        return;
    bool fix = stored > refs ? (ck->repair & IMG_CHECK_REPAIR_LEAKS)
                             : (ck->repair & IMG_CHECK_REPAIR_ERRORS);
    report(ck, "%s cluster %llu refcount=%llu reference=%llu",
           fix ? "Repairing" : stored < refs ? "ERROR" : "Leaked", (unsigned long long)c,
           (unsigned long long)stored, (unsigned long long)refs);
    if (fix && qcow2_rc_set(ck->img, ck->q, c, refs) == 0) {
        if (stored > refs)
            res->leaks_fixed++;
        else
            res->corruptions_fixed++;
        return;
    }
    if (stored < refs)
        res->corruptions++;
    else
        res->leaks++;
}

static void compare_refcounts(struct checker *ck, uint64_t *highest)
{
    uint64_t file_clusters = ((uint64_t)img_fd_size(ck->img->fd) + ck->q->cluster_size - 1) >>
                             ck->q->geom.cluster_bits;
    uint64_t end = ck->n > file_clusters ? ck->n : file_clusters;
    if (end > QCOW2_CHECK_MAX_CLUSTERS)
        end = QCOW2_CHECK_MAX_CLUSTERS;
    *highest = 0;
    for (uint64_t c = 0; c < end; c++)
        compare_one(ck, c, highest);
}

/* ---- COPIED flags of the active tables ---- */

static bool copied_flag_wrong(struct checker *ck, uint64_t host, uint64_t entry, uint64_t *refs)
{
    if (qcow2_rc_get(ck->img, ck->q, host >> ck->q->geom.cluster_bits, refs) < 0)
        return false;
    return (*refs == 1) != ((entry & QCOW2_OFLAG_COPIED) != 0);
}

static int check_copied_l2(struct checker *ck, struct qcow2_l2_slot *s)
{
    struct qcow2 *q = ck->q;
    for (uint64_t i = 0; i < (1ull << q->l2_bits); i++) {
        uint8_t *e = s->data + i * q->entry_bytes;
        uint64_t entry = get_be64(e), host = entry & QCOW2_OFFSET_MASK, refs;
        if ((entry & QCOW2_OFLAG_COMPRESSED) || !host || (host & (q->cluster_size - 1)) ||
            q->geom.data_file || !copied_flag_wrong(ck, host, entry, &refs))
            continue;
        bool fix = (ck->repair & IMG_CHECK_REPAIR_ERRORS) && q->w && !ck->q->w->broken;
        report(ck, "%s OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu",
               fix ? "Repairing" : "ERROR", (unsigned long long)entry, (unsigned long long)refs);
        if (fix) {
            put_be64(e, refs == 1 ? entry | QCOW2_OFLAG_COPIED : entry & ~QCOW2_OFLAG_COPIED);
            qcow2_l2_mark_dirty(q, s);
            ck->res->corruptions_fixed++;
        } else
            ck->res->corruptions++;
    }
    return 0;
}

static int check_copied(struct checker *ck, bool can_fix)
{
    struct qcow2 *q = ck->q;
    for (uint32_t i = 0; i < q->l1_size; i++) {
        uint64_t l2_off = q->l1[i] & QCOW2_OFFSET_MASK, refs;
        if (!l2_off || (l2_off & (q->cluster_size - 1)))
            continue;
        if (copied_flag_wrong(ck, l2_off, q->l1[i], &refs)) {
            report(ck, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%llx refcount=%llu",
                   can_fix ? "Repairing" : "ERROR", i, (unsigned long long)q->l1[i],
                   (unsigned long long)refs);
            if (can_fix) {
                q->l1[i] = refs == 1 ? q->l1[i] | QCOW2_OFLAG_COPIED : q->l1[i] & ~QCOW2_OFLAG_COPIED;
                if (q->w->l1_dirty_hi <= q->w->l1_dirty_lo) {
                    q->w->l1_dirty_lo = i;
                    q->w->l1_dirty_hi = i + 1;
                } else {
                    q->w->l1_dirty_lo = i < q->w->l1_dirty_lo ? i : q->w->l1_dirty_lo;
                    q->w->l1_dirty_hi = i + 1 > q->w->l1_dirty_hi ? i + 1 : q->w->l1_dirty_hi;
                }
                ck->res->corruptions_fixed++;
            } else
                ck->res->corruptions++;
        }
        struct qcow2_l2_slot *s;
        if (qcow2_l2_get(ck->img, q, l2_off, &s) < 0)
            continue;   /* already reported by the walk */
        check_copied_l2(ck, s);
        qcow2_l2_put(q, s);
    }
    return 0;
}

/* ---- putting it together ---- */

static int clear_dirty_bit(struct img *img, struct qcow2 *q)
{
    if (!(q->h.incompatible & QCOW2_INCOMPAT_DIRTY))
        return 0;
    uint8_t b[8];
    put_be64(b, q->h.incompatible & ~QCOW2_INCOMPAT_DIRTY);
    int r = qcow2_pwrite(img, b, sizeof(b), 72, "header");
    if (r == 0)
        r = qcow2_sync(img);
    if (r == 0)
        q->h.incompatible &= ~QCOW2_INCOMPAT_DIRTY;
    return r;
}

static int run_check(struct checker *ck)
{
    struct qcow2 *q = ck->q;
    struct img_check *res = ck->res;
    int64_t file_size = img_fd_size(ck->img->fd);
    if (file_size < 0)
        return img_error(ck->img, (int)-file_size, "cannot get the file size: %s",
                         strerror((int)-file_size));
    ck->file_size = (uint64_t)file_size;
    uint64_t clusters = (ck->file_size + q->cluster_size - 1) >> q->geom.cluster_bits;
    if (clusters > QCOW2_CHECK_MAX_CLUSTERS) {
        res->check_errors++;
        return img_error(ck->img, EFBIG, "the file holds %llu clusters, more than check can "
                         "count", (unsigned long long)clusters);
    }
    int r = grow_refs(ck, clusters ? clusters : 1);
    res->total_clusters = (ck->img->size + q->cluster_size - 1) >> q->geom.cluster_bits;
    if (r == 0)
        r = add_refs(ck, 0, q->cluster_size);
    if (r == 0 && q->l1_size)
        r = add_refs(ck, q->h.l1_table_offset, (uint64_t)q->l1_size * 8);
    if (r == 0)
        r = check_l1(ck, q->l1, q->l1_size, true);
    if (r == 0)
        r = check_snapshots(ck);
    if (r == 0)
        r = check_refcount_structures(ck);
    if (r < 0)
        return r;
    uint64_t highest;
    compare_refcounts(ck, &highest);
    bool can_fix = (ck->repair & IMG_CHECK_REPAIR_ERRORS) && ck->img->read_write;
    check_copied(ck, can_fix);
    res->image_end_offset = (highest + 1) << q->geom.cluster_bits;
    return 0;
}

int qcow2_check(struct img *img, struct img_check *res, unsigned repair)
{
    struct qcow2 *q = img->priv;
    if (repair && !q->w)
        return img_error(img, EROFS, "cannot repair an image opened read-only");
    struct checker ck = { .img = img, .q = q, .res = res, .repair = repair };
    bool own_writer = !q->w;
    /* A read-only check borrows the writer's refcount code, reading only. */
    int r = own_writer ? qcow2_writer_init(img, q) : 0;
    if (r < 0) {
        qcow2_writer_free(q);
        return r;
    }
    pthread_rwlock_wrlock(&q->meta);
    if (!own_writer)
        r = qcow2_flush_locked(img, q);   /* the disk must show what we count */
    if (r == 0)
        r = run_check(&ck);
    bool repaired = res->leaks_fixed || res->corruptions_fixed;
    if (r == 0 && !own_writer && (repaired || (repair & IMG_CHECK_REPAIR_ERRORS)))
        r = qcow2_flush_locked(img, q);
    if (r == 0 && !own_writer && (repair & IMG_CHECK_REPAIR_ERRORS) && !res->corruptions)
        r = clear_dirty_bit(img, q);
    pthread_rwlock_unlock(&q->meta);
    if (own_writer)
        qcow2_writer_free(q);
    free(ck.refs);
    return r;
}
