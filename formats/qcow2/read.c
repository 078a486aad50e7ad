/* qcow2 reads of compressed clusters (the only DATA without plain host
 * bytes).  Decompression runs without any lock held; a small cache of
 * recently inflated clusters spares re-inflating a cluster for each of the
 * many small reads (FUSE asks 128 KiB at a time, clusters reach 2 MiB). */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Inflated clusters kept per image: at most this many bytes ... */
#define QCOW2_ZCACHE_BYTES (4u << 20)
/* ... and at most this many clusters. */
#define QCOW2_ZCACHE_MAX_SLOTS 8

struct qcow2_zslot {
    uint64_t comp_off;      /* key: where the stream starts */
    uint64_t last_use;
    uint8_t *data;          /* one cluster, or NULL when empty */
};

struct qcow2_zcache {
    pthread_mutex_t lock;
    unsigned n;
    uint64_t clock;
    struct qcow2_zslot slot[];
};

int qcow2_zcache_init(struct qcow2 *q)
{
    unsigned n = QCOW2_ZCACHE_BYTES / q->cluster_size;
    if (n < 1)
        n = 1;
    if (n > QCOW2_ZCACHE_MAX_SLOTS)
        n = QCOW2_ZCACHE_MAX_SLOTS;
    struct qcow2_zcache *z = calloc(1, sizeof(*z) + n * sizeof(z->slot[0]));
    if (!z)
        return -ENOMEM;
    z->n = n;
    pthread_mutex_init(&z->lock, NULL);
    q->zcache = z;
    return 0;
}

void qcow2_zcache_destroy(struct qcow2 *q)
{
    struct qcow2_zcache *z = q->zcache;
    if (!z)
        return;
    for (unsigned i = 0; i < z->n; i++)
        free(z->slot[i].data);
    pthread_mutex_destroy(&z->lock);
    free(z);
    q->zcache = NULL;
}

void qcow2_zcache_forget(struct qcow2 *q, uint64_t comp_off)
{
    struct qcow2_zcache *z = q->zcache;
    pthread_mutex_lock(&z->lock);
    for (unsigned i = 0; i < z->n; i++) {
        struct qcow2_zslot *s = &z->slot[i];
        if (s->data && s->comp_off == comp_off) {
            free(s->data);
            s->data = NULL;
        }
    }
    pthread_mutex_unlock(&z->lock);
}

/* Copy out of a cached cluster; false when it is not there. */
static bool zcache_copy(struct qcow2_zcache *z, uint64_t comp_off, void *buf, size_t len,
                        size_t into)
{
    bool found = false;
    pthread_mutex_lock(&z->lock);
    for (unsigned i = 0; i < z->n && !found; i++) {
        struct qcow2_zslot *s = &z->slot[i];
        if (s->data && s->comp_off == comp_off) {
            memcpy(buf, s->data + into, len);
            s->last_use = ++z->clock;
            found = true;
        }
    }
    pthread_mutex_unlock(&z->lock);
    return found;
}

/* Keep `cluster` (taking ownership) in place of the least recently used. */
static void zcache_keep(struct qcow2_zcache *z, uint64_t comp_off, uint8_t *cluster)
{
    pthread_mutex_lock(&z->lock);
    struct qcow2_zslot *victim = &z->slot[0];
    for (unsigned i = 0; i < z->n; i++) {
        struct qcow2_zslot *s = &z->slot[i];
        if (s->data && s->comp_off == comp_off) {   /* a racing reader was first */
            victim = s;
            break;
        }
        if (!s->data || s->last_use < victim->last_use)
            victim = s;
        if (!s->data)
            break;
    }
    uint8_t *old = victim->data;
    victim->data = cluster;
    victim->comp_off = comp_off;
    victim->last_use = ++z->clock;
    pthread_mutex_unlock(&z->lock);
    free(old);
}

static int decompress_error(struct img *img, const struct qcow2 *q,
                            const struct qcow2_mapping *m, ssize_t got)
{
    unsigned long long at = (unsigned long long)m->comp_off;
    const char *kind = decompress_kind_name(q->decompress);
    if (got == -ENOMEM)
        return -ENOMEM;
    if (got == -EOVERFLOW)
        return img_error(img, EIO, "compressed cluster at 0x%llx expands past one cluster (%s)",
                         at, kind);
    if (got >= 0)
        return img_error(img, EIO, "compressed cluster at 0x%llx holds only %zd of %u bytes (%s)",
                         at, got, q->cluster_size, kind);
    return img_error(img, EIO, "compressed cluster at 0x%llx is corrupt (%s)", at, kind);
}

/* Read the stream named by `m` and inflate it into `cluster`. */
static int inflate_cluster(struct img *img, struct qcow2 *q, const struct qcow2_mapping *m,
                           uint8_t *cluster)
{
    /* The sector count only bounds the stream; its last sector may be cut by
     * the end of the file. */
    uint64_t len = m->comp_len;
    if (!qcow2_fits(q->data_fd, &q->data_size, m->comp_off + len)) {
        int64_t size = __atomic_load_n(&q->data_size, __ATOMIC_RELAXED);
        if (m->comp_off >= (uint64_t)size)
            return img_error(img, EIO, "compressed cluster at 0x%llx lies past the end of "
                             "the file", (unsigned long long)m->comp_off);
        len = (uint64_t)size - m->comp_off;
    }
    uint8_t *stream = malloc(len);
    if (!stream)
        return -ENOMEM;
    int r = img_pread(img, q->data_fd, stream, len, m->comp_off, "compressed cluster");
    if (r == 0) {
        ssize_t got = decompress_bounded(q->decompress, stream, len, cluster, q->cluster_size);
        if (got != (ssize_t)q->cluster_size)
            r = decompress_error(img, q, m, got);
    }
    free(stream);
    return r;
}

int qcow2_read_compressed(struct img *img, struct qcow2 *q, const struct qcow2_mapping *m,
                           void *buf, size_t len, size_t into)
{
    if (zcache_copy(q->zcache, m->comp_off, buf, len, into))
        return 0;
    uint8_t *cluster = malloc(q->cluster_size);
    if (!cluster)
        return -ENOMEM;
    int r = inflate_cluster(img, q, m, cluster);
    if (r < 0) {
        free(cluster);
        return r;
    }
    memcpy(buf, cluster + into, len);
    zcache_keep(q->zcache, m->comp_off, cluster);
    return 0;
}

/* One piece of the read, within a single (sub)cluster or compressed cluster. */
static int read_piece(struct img *img, struct qcow2 *q, uint8_t *buf, size_t len, uint64_t off,
                      const struct qcow2_mapping *m, uint64_t into_unit)
{
    switch (m->type) {
    case QCOW2_COMPRESSED:
        return qcow2_read_compressed(img, q, m, buf, len, (size_t)(off & (q->cluster_size - 1)));
    case QCOW2_NORMAL:
        return img_pread(img, q->data_fd, buf, len, m->host_off + into_unit, "data");
    case QCOW2_ZERO:
        memset(buf, 0, len);
        return 0;
    case QCOW2_UNALLOCATED:
        break;
    }
    /* The core reads unallocated ranges from the backing file, never here. */
    return img_error(img, EIO, "read of unallocated guest offset 0x%llx asked of the qcow2 "
                     "layer", (unsigned long long)off);
}

int qcow2_read(struct img *img, void *buf, size_t len, uint64_t off)
{
    struct qcow2 *q = img->priv;
    uint8_t *p = buf;
    while (len > 0) {
        struct qcow2_mapping m;
        int r = qcow2_lookup(img, off, &m);
        if (r < 0)
            return r;
        unsigned bits = m.type == QCOW2_COMPRESSED ? q->geom.cluster_bits : q->unit_bits;
        uint64_t into = off & ((1ull << bits) - 1);
        uint64_t room = (1ull << bits) - into;
        size_t n = room < len ? (size_t)room : len;
        r = read_piece(img, q, p, n, off, &m, into);
        if (r < 0)
            return r;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}
