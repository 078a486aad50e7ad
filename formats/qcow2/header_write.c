/* qcow2 header updates: laying out the first cluster (create, set_backing),
 * recording another backing file, and resizing. */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/bytes.h"

/* ---- the first cluster ---- */

static const struct {
    uint8_t type, bit;
    const char *name;
} feature_names[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

size_t qcow2_feature_table(uint8_t *out)
{
    size_t n = sizeof(feature_names) / sizeof(feature_names[0]);
    memset(out, 0, 8 + n * QCOW2_FEATURE_NAME_ENTRY);
    put_be32(out, QCOW2_EXT_FEATURE_NAMES);
    put_be32(out + 4, (uint32_t)(n * QCOW2_FEATURE_NAME_ENTRY));
    for (size_t i = 0; i < n; i++) {
        uint8_t *e = out + 8 + i * QCOW2_FEATURE_NAME_ENTRY;
        e[0] = feature_names[i].type;
        e[1] = feature_names[i].bit;
        memcpy(e + 2, feature_names[i].name, strlen(feature_names[i].name));
    }
    return 8 + n * QCOW2_FEATURE_NAME_ENTRY;
}

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

int qcow2_build_header(uint8_t *buf, size_t cap, const uint8_t *fixed, size_t fixed_len,
                       const uint8_t *exts, size_t exts_len, const char *backing,
                       const char *backing_fmt)
{
    size_t fmt_len = backing_fmt ? strlen(backing_fmt) : 0;
    size_t name_len = backing ? strlen(backing) : 0;
    size_t need = fixed_len + (backing_fmt ? 8 + pad8(fmt_len) : 0) + exts_len + 8 + name_len;
    if (need > cap || name_len > QCOW2_MAX_BACKING_NAME)
        return -ENOSPC;
    memcpy(buf, fixed, fixed_len);
    size_t pos = fixed_len;
    if (backing_fmt) {
        put_be32(buf + pos, QCOW2_EXT_BACKING_FMT);
        put_be32(buf + pos + 4, (uint32_t)fmt_len);
        memcpy(buf + pos + 8, backing_fmt, fmt_len);
        pos += 8 + pad8(fmt_len);
    }
    if (exts_len)
        memcpy(buf + pos, exts, exts_len);
    pos += exts_len + 8;   /* the end marker: type 0, length 0 */
    put_be64(buf + 8, name_len ? pos : 0);
    put_be32(buf + 16, (uint32_t)name_len);
    if (name_len)
        memcpy(buf + pos, backing, name_len);
    return (int)(pos + name_len);
}

/* The extensions of the current header except the backing format, padded,
 * as one blob. */
static int keep_extensions(struct img *img, const struct qcow2 *q, const uint8_t *hdr, size_t len,
                           uint8_t *out, size_t *out_len)
{
    size_t pos = q->h.header_length, end = len, used = 0;
    if (q->h.backing_file_offset && q->h.backing_file_offset < end)
        end = (size_t)q->h.backing_file_offset;
    while (pos + 8 <= end) {
        uint32_t type = get_be32(hdr + pos), n = get_be32(hdr + pos + 4);
        if (type == QCOW2_EXT_END)
            break;
        if (n > end - pos - 8)
            return img_error(img, EINVAL, "header extension 0x%08x runs past the header", type);
        size_t whole = 8 + pad8(n);
        if (whole > end - pos)
            whole = end - pos;
        if (type != QCOW2_EXT_BACKING_FMT) {
            memcpy(out + used, hdr + pos, whole);
            used += whole;
        }
        pos += whole;
    }
    *out_len = used;
    return 0;
}

static int rewrite_header(struct img *img, struct qcow2 *q, const char *file, const char *fmt)
{
    size_t cs = q->cluster_size;
    uint8_t *old = calloc(1, cs), *exts = calloc(1, cs), *fresh = calloc(1, cs);
    int r = old && exts && fresh ? 0 : -ENOMEM;
    size_t exts_len = 0;
    if (r == 0)
        r = img_pread(img, img->fd, old, cs, 0, "header cluster");
    if (r == 0)
        r = keep_extensions(img, q, old, cs, exts, &exts_len);
    if (r == 0) {
        r = qcow2_build_header(fresh, cs, old, q->h.header_length, exts, exts_len, file, fmt);
        if (r == -ENOSPC)
            r = img_error(img, ENOSPC, "the backing file name and the header extensions do "
                          "not fit in the first cluster (%zu bytes)", cs);
    }
    /* QEMU too rewrites the header in one write; the fields it changes
     * (backing name and format) are only read at open. */
    if (r >= 0)
        r = qcow2_pwrite(img, fresh, cs, 0, "header");
    if (r == 0)
        r = qcow2_sync(img);
    if (r == 0) {
        q->h.backing_file_offset = get_be64(fresh + 8);
        q->h.backing_file_size = get_be32(fresh + 16);
    }
    free(old);
    free(exts);
    free(fresh);
    return r;
}

static int replace_string(char **slot, const char *value)
{
    char *copy = value ? strdup(value) : NULL;
    if (value && !copy)
        return -ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

int qcow2_set_backing(struct img *img, const char *file, const char *fmt)
{
    struct qcow2 *q = img->priv;
    if (!q->w)
        return img_error(img, EROFS, "image is opened read-only");
    if (file && (!*file || strlen(file) > QCOW2_MAX_BACKING_NAME))
        return img_error(img, EINVAL, "backing file name must be 1..%d bytes",
                         QCOW2_MAX_BACKING_NAME);
    if (!file)
        fmt = NULL;
    if (fmt && strlen(fmt) > QCOW2_MAX_BACKING_FMT)
        return img_error(img, EINVAL, "backing format name '%s' is too long", fmt);
    pthread_rwlock_wrlock(&q->meta);
    /* Data written before must not end up read through another backing
     * file's eyes half-way: flush it first. */
    int r = qcow2_flush_locked(img, q);
    if (r == 0)
        r = rewrite_header(img, q, file, fmt);
    if (r == 0)
        r = replace_string(&img->backing_file, file);
    if (r == 0)
        r = replace_string(&img->backing_fmt, fmt);
    pthread_rwlock_unlock(&q->meta);
    return r;
}

/* ---- resize ---- */

static uint64_t l1_entries_for(const struct qcow2 *q, uint64_t size)
{
    unsigned shift = q->geom.cluster_bits + q->l2_bits;
    return (size + (1ull << shift) - 1) >> shift;
}

/* A larger L1 table: allocated, counted and written in full before the
 * header names it; the old one is dropped after that. */
static int grow_l1(struct img *img, struct qcow2 *q, uint64_t entries)
{
    uint64_t bytes = entries * 8;
    uint64_t clusters = (bytes + q->cluster_size - 1) >> q->geom.cluster_bits, at;
    uint64_t *l1 = calloc(entries, sizeof(*l1));
    uint8_t *raw = calloc(1, clusters << q->geom.cluster_bits);
    int r = l1 && raw ? qcow2_alloc_clusters(img, q, clusters, &at) : -ENOMEM;
    if (r == 0) {
        if (q->l1_size)
            memcpy(l1, q->l1, (size_t)q->l1_size * 8);
        for (uint64_t i = 0; i < entries; i++)
            put_be64(raw + 8 * i, l1[i]);
        r = qcow2_rc_writeback(img, q);
    }
    if (r == 0)
        r = qcow2_pwrite(img, raw, bytes, at, "L1 table");
    if (r == 0)
        r = qcow2_sync(img);
    uint8_t hdr[12];
    put_be32(hdr, (uint32_t)entries);
    put_be64(hdr + 4, at);
    if (r == 0)
        r = qcow2_pwrite(img, hdr, sizeof(hdr), 36, "header");
    if (r == 0)
        r = qcow2_sync(img);
    if (r == 0 && q->l1_size)
        r = qcow2_free_later(img, q, q->h.l1_table_offset, (uint64_t)q->l1_size * 8);
    free(raw);
    if (r < 0) {
        free(l1);
        return r;
    }
    free(q->l1);
    q->l1 = l1;
    q->l1_size = (uint32_t)entries;
    q->h.l1_size = (uint32_t)entries;
    q->h.l1_table_offset = at;
    return 0;
}

/* Shrinking drops every cluster past the new end (a cluster cut by the new
 * end stays whole, as its tail is beyond the size and never read). */
static int drop_tail(struct img *img, struct qcow2 *q, uint64_t new_size)
{
    uint64_t off = (new_size + q->cluster_size - 1) & ~((uint64_t)q->cluster_size - 1);
    unsigned shift = q->geom.cluster_bits + q->l2_bits;
    while (off < img->size) {
        uint64_t i = off >> shift, l2_off = q->l1[i] & QCOW2_OFFSET_MASK;
        uint64_t table_end = (i + 1) << shift;
        if (l2_off) {
            struct qcow2_l2_slot *s;
            int r = qcow2_l2_get(img, q, l2_off, &s);
            if (r < 0)
                return r;
            for (uint64_t g = off; r == 0 && g < table_end && g < img->size; g += q->cluster_size) {
                uint64_t idx = (g >> q->geom.cluster_bits) & ((1ull << q->l2_bits) - 1);
                uint8_t *e = s->data + idx * q->entry_bytes;
                uint64_t entry = get_be64(e);
                if (entry == 0 && (!q->geom.extended_l2 || get_be64(e + 8) == 0))
                    continue;
                uint64_t coff, clen;
                if (entry & QCOW2_OFLAG_COMPRESSED) {
                    qcow2_decode_compressed(q->geom.cluster_bits, entry, &coff, &clen);
                    r = qcow2_free_later(img, q, coff, clen);
                } else if (entry & QCOW2_OFFSET_MASK)
                    r = qcow2_free_later(img, q, entry & QCOW2_OFFSET_MASK, q->cluster_size);
                memset(e, 0, q->entry_bytes);
                qcow2_l2_mark_dirty(q, s);
            }
            qcow2_l2_put(q, s);
            if (r < 0)
                return r;
        }
        off = table_end;
    }
    return 0;
}

static int write_size(struct img *img, struct qcow2 *q, uint64_t new_size)
{
    uint8_t b[8];
    put_be64(b, new_size);
    int r = qcow2_pwrite(img, b, sizeof(b), 24, "header");
    if (r == 0)
        r = qcow2_sync(img);
    if (r == 0) {
        q->h.size = new_size;
        img->size = new_size;
    }
    return r;
}

static int resize_locked(struct img *img, struct qcow2 *q, uint64_t new_size, bool shrink)
{
    int r = qcow2_flush_locked(img, q);
    if (r < 0)
        return r;
    if (new_size < img->size) {
        if (!shrink)
            return img_error(img, EINVAL, "Use the --shrink option to perform a shrink "
                             "operation.");
        /* Tables first (their drops wait for the flush), then the size: a
         * crash in between leaves a disk whose tail reads as zeros. */
        r = drop_tail(img, q, new_size);
        if (r == 0)
            r = qcow2_flush_locked(img, q);
        return r == 0 ? write_size(img, q, new_size) : r;
    }
    uint64_t entries = l1_entries_for(q, new_size);
    if (entries * 8 > QCOW2_MAX_L1_BYTES)
        return img_error(img, EFBIG, "an L1 table for %llu bytes would pass %u MiB",
                         (unsigned long long)new_size, QCOW2_MAX_L1_BYTES >> 20);
    if (entries > q->l1_size)
        r = grow_l1(img, q, entries);
    if (r == 0)
        r = write_size(img, q, new_size);
    return r == 0 ? qcow2_flush_locked(img, q) : r;
}

int qcow2_resize(struct img *img, uint64_t new_size, bool shrink)
{
    struct qcow2 *q = img->priv;
    if (!q->w)
        return img_error(img, EROFS, "image is opened read-only");
    if (q->h.incompatible & QCOW2_INCOMPAT_DIRTY)
        return img_error(img, EROFS, "image is dirty (lazy refcounts); repair it with "
                         "check -r all before resizing");
    if (new_size & 511)
        return img_error(img, EINVAL, "the new size must be a multiple of 512 bytes");
    if (new_size > (uint64_t)INT64_MAX)
        return img_error(img, EFBIG, "the new size is too large");
    pthread_rwlock_wrlock(&q->meta);
    int r = resize_locked(img, q, new_size, shrink);
    pthread_rwlock_unlock(&q->meta);
    return r;
}
