/* qcow2 mapping: L2 entry decoding, the L2 table cache, and the map answer
 * (guest range -> one extent of this layer), all from the tables alone. */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/bytes.h"

/* Cached L2 tables take at most this much memory per image. */
#define QCOW2_L2_CACHE_BYTES (32u << 20)
#define QCOW2_L2_CACHE_MIN_TABLES 4
#define QCOW2_L2_CACHE_MAX_BUCKETS 4096

/* ---- entry decoding (pure) ---- */

void qcow2_decode_compressed(unsigned cluster_bits, uint64_t entry,
                             uint64_t *comp_off, uint64_t *comp_len)
{
    /* The descriptor splits at x = 62 - (cluster_bits - 8): below x the host
     * byte offset, from x to 61 the count of 512-byte sectors beyond the one
     * holding that offset. */
    unsigned x = 62 - (cluster_bits - 8);
    uint64_t descriptor = entry & ~(QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED);
    uint64_t extra_sectors = descriptor >> x;
    *comp_off = descriptor & ((1ull << x) - 1);
    *comp_len = (extra_sectors + 1) * 512 - (*comp_off & 511);
}

static int decode_standard(const struct qcow2_geom *g, uint64_t entry, uint64_t host,
                           bool allocated, struct qcow2_mapping *m, const char **why)
{
    if (entry & QCOW2_OFLAG_ZERO) {
        /* Version 2 has no zero flag: QEMU calls such an entry corrupt. */
        if (g->v2) {
            *why = "has the zero flag, which version 2 images do not have";
            return -EIO;
        }
        m->type = QCOW2_ZERO;
    }
    else if (!allocated)
        m->type = QCOW2_UNALLOCATED;
    else {
        m->type = QCOW2_NORMAL;
        m->host_off = host;
    }
    return 0;
}

static int decode_extended(const struct qcow2_geom *g, uint64_t host, bool allocated,
                           uint64_t bitmap, unsigned sub, struct qcow2_mapping *m,
                           const char **why)
{
    uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32);
    if (alloc & zero) {
        *why = "has subclusters marked both allocated and zero";
        return -EIO;
    }
    if (!allocated && alloc) {
        *why = "has allocated subclusters but no host cluster";
        return -EIO;
    }
    if (zero & (1u << sub))
        m->type = QCOW2_ZERO;
    else if (alloc & (1u << sub)) {
        m->type = QCOW2_NORMAL;
        m->host_off = host + ((uint64_t)sub << (g->cluster_bits - 5));
    } else
        m->type = QCOW2_UNALLOCATED;   /* with or without a host cluster: backing */
    return 0;
}

int qcow2_decode_l2(const struct qcow2_geom *g, uint64_t entry, uint64_t bitmap,
                    unsigned sub, struct qcow2_mapping *m, const char **why)
{
    memset(m, 0, sizeof(*m));
    if (sub >= (g->extended_l2 ? QCOW2_SUBCLUSTERS : 1u)) {
        *why = "subcluster index out of range";
        return -EINVAL;
    }
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        /* A compressed cluster has no subclusters: the bitmap is ignored. */
        m->type = QCOW2_COMPRESSED;
        qcow2_decode_compressed(g->cluster_bits, entry, &m->comp_off, &m->comp_len);
        return 0;
    }
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    /* Offset 0 is a real place in an external data file; there the COPIED
     * bit (refcount 1, always true for such clusters) tells it apart from
     * "unallocated". */
    bool allocated = host != 0 || (g->data_file && (entry & QCOW2_OFLAG_COPIED));
    if (allocated && (host & ((1ull << g->cluster_bits) - 1))) {
        *why = "points to an unaligned host cluster";
        return -EIO;
    }
    if (g->extended_l2)
        return decode_extended(g, host, allocated, bitmap, sub, m, why);
    return decode_standard(g, entry, host, allocated, m, why);
}

/* ---- file size ---- */

bool qcow2_fits(int fd, int64_t *cached_size, uint64_t end)
{
    int64_t size = __atomic_load_n(cached_size, __ATOMIC_RELAXED);
    if (end <= (uint64_t)size)
        return true;
    size = img_fd_size(fd);
    if (size < 0)
        return false;
    __atomic_store_n(cached_size, size, __ATOMIC_RELAXED);
    return end <= (uint64_t)size;
}

/* ---- the L2 table cache ---- */

int qcow2_cache_init(struct qcow2_l2_cache *c, uint32_t cluster_size)
{
    memset(c, 0, sizeof(*c));
    c->max = QCOW2_L2_CACHE_BYTES / cluster_size;
    if (c->max < QCOW2_L2_CACHE_MIN_TABLES)
        c->max = QCOW2_L2_CACHE_MIN_TABLES;
    c->n_buckets = 16;
    while (c->n_buckets < c->max && c->n_buckets < QCOW2_L2_CACHE_MAX_BUCKETS)
        c->n_buckets *= 2;
    c->buckets = calloc(c->n_buckets, sizeof(*c->buckets));
    if (!c->buckets)
        return -ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    return 0;
}

void qcow2_cache_destroy(struct qcow2_l2_cache *c)
{
    if (!c->buckets)
        return;
    struct qcow2_l2_slot *s = c->lru_head;
    while (s) {
        struct qcow2_l2_slot *next = s->next;
        free(s->data);
        free(s);
        s = next;
    }
    free(c->buckets);
    c->buckets = NULL;
    pthread_mutex_destroy(&c->lock);
}

static unsigned bucket_of(const struct qcow2_l2_cache *c, uint64_t l2_off)
{
    return (unsigned)(((l2_off >> 9) * 0x9e3779b97f4a7c15ull) >> 40) & (c->n_buckets - 1);
}

static void lru_unlink(struct qcow2_l2_cache *c, struct qcow2_l2_slot *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        c->lru_head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        c->lru_tail = s->prev;
    s->prev = s->next = NULL;
}

static void lru_push_front(struct qcow2_l2_cache *c, struct qcow2_l2_slot *s)
{
    s->prev = NULL;
    s->next = c->lru_head;
    if (c->lru_head)
        c->lru_head->prev = s;
    c->lru_head = s;
    if (!c->lru_tail)
        c->lru_tail = s;
}

/* Under the lock: find and pin. */
static struct qcow2_l2_slot *cache_find(struct qcow2_l2_cache *c, uint64_t l2_off)
{
    for (struct qcow2_l2_slot *s = c->buckets[bucket_of(c, l2_off)]; s; s = s->hnext) {
        if (s->l2_off != l2_off)
            continue;
        s->refs++;
        if (c->lru_head != s) {
            lru_unlink(c, s);
            lru_push_front(c, s);
        }
        return s;
    }
    return NULL;
}

/* Under the lock: drop the oldest clean table (a dirty one must reach the
 * disk first).  One still in use is only marked; its last user frees it.
 * False when every table is dirty: the cache then grows past its limit
 * until the writer's next writeback. */
static bool cache_evict_one(struct qcow2_l2_cache *c)
{
    struct qcow2_l2_slot *s = c->lru_tail;
    while (s && s->dirty)
        s = s->prev;
    if (!s)
        return false;
    struct qcow2_l2_slot **pp = &c->buckets[bucket_of(c, s->l2_off)];
    while (*pp != s)
        pp = &(*pp)->hnext;
    *pp = s->hnext;
    lru_unlink(c, s);
    c->count--;
    if (s->refs == 0) {
        free(s->data);
        free(s);
    } else
        s->evicted = true;
    return true;
}

static void cache_insert(struct qcow2_l2_cache *c, struct qcow2_l2_slot *s)
{
    while (c->count >= c->max && c->lru_tail && cache_evict_one(c))
        ;
    unsigned b = bucket_of(c, s->l2_off);
    s->hnext = c->buckets[b];
    c->buckets[b] = s;
    lru_push_front(c, s);
    c->count++;
}

void qcow2_l2_put(struct qcow2 *q, struct qcow2_l2_slot *s)
{
    pthread_mutex_lock(&q->cache.lock);
    bool gone = --s->refs == 0 && s->evicted;
    pthread_mutex_unlock(&q->cache.lock);
    if (gone) {
        free(s->data);
        free(s);
    }
}

/* Read the table from disk, outside the lock. */
static int l2_load(struct img *img, struct qcow2 *q, uint64_t l2_off, struct qcow2_l2_slot **out)
{
    if (!qcow2_fits(img->fd, &q->file_size, l2_off + q->cluster_size))
        return img_error(img, EIO, "L2 table at 0x%llx lies past the end of the file",
                         (unsigned long long)l2_off);
    struct qcow2_l2_slot *s = calloc(1, sizeof(*s));
    uint8_t *data = malloc(q->cluster_size);
    if (!s || !data) {
        free(s);
        free(data);
        return -ENOMEM;
    }
    int r = img_pread(img, img->fd, data, q->cluster_size, l2_off, "L2 table");
    if (r < 0) {
        free(s);
        free(data);
        return r;
    }
    s->l2_off = l2_off;
    s->data = data;
    s->refs = 1;
    *out = s;
    return 0;
}

/* The pinned L2 table at l2_off; release with l2_put. */
int qcow2_l2_get(struct img *img, struct qcow2 *q, uint64_t l2_off, struct qcow2_l2_slot **out)
{
    struct qcow2_l2_cache *c = &q->cache;
    pthread_mutex_lock(&c->lock);
    struct qcow2_l2_slot *s = cache_find(c, l2_off);
    if (s)
        c->hits++;
    else
        c->misses++;
    pthread_mutex_unlock(&c->lock);
    if (s) {
        *out = s;
        return 0;
    }
    struct qcow2_l2_slot *fresh = NULL;
    int r = l2_load(img, q, l2_off, &fresh);
    if (r < 0)
        return r;
    pthread_mutex_lock(&c->lock);
    s = cache_find(c, l2_off);      /* another thread may have won the race */
    if (!s)
        cache_insert(c, fresh);
    pthread_mutex_unlock(&c->lock);
    if (s) {
        free(fresh->data);
        free(fresh);
    } else
        s = fresh;
    *out = s;
    return 0;
}

/* ---- the writer's side of the cache (q->meta held exclusively) ---- */

int qcow2_l2_new(struct qcow2 *q, uint64_t l2_off, struct qcow2_l2_slot **out)
{
    struct qcow2_l2_slot *s = calloc(1, sizeof(*s));
    uint8_t *data = calloc(1, q->cluster_size);
    if (!s || !data) {
        free(s);
        free(data);
        return -ENOMEM;
    }
    s->l2_off = l2_off;
    s->data = data;
    s->refs = 1;
    s->dirty = true;
    struct qcow2_l2_cache *c = &q->cache;
    pthread_mutex_lock(&c->lock);
    /* A stale clean copy of a table that used to live here must go. */
    struct qcow2_l2_slot *old = cache_find(c, l2_off);
    if (old) {
        old->refs--;
        if (old->dirty)
            c->dirty--;
        old->dirty = false;
        struct qcow2_l2_slot **pp = &c->buckets[bucket_of(c, l2_off)];
        while (*pp != old)
            pp = &(*pp)->hnext;
        *pp = old->hnext;
        lru_unlink(c, old);
        c->count--;
        if (old->refs == 0) {
            free(old->data);
            free(old);
        } else
            old->evicted = true;
    }
    cache_insert(c, s);
    c->dirty++;
    pthread_mutex_unlock(&c->lock);
    *out = s;
    return 0;
}

void qcow2_l2_mark_dirty(struct qcow2 *q, struct qcow2_l2_slot *s)
{
    pthread_mutex_lock(&q->cache.lock);
    if (!s->dirty && !s->evicted) {
        s->dirty = true;
        q->cache.dirty++;
    }
    pthread_mutex_unlock(&q->cache.lock);
}

int qcow2_l2_writeback(struct img *img, struct qcow2 *q)
{
    struct qcow2_l2_cache *c = &q->cache;
    int written = 0;
    /* Only the writer dirties tables and it holds q->meta, so the set of
     * dirty tables cannot change while we walk; the cache lock guards the
     * list against readers inserting and evicting clean tables. */
    pthread_mutex_lock(&c->lock);
    for (struct qcow2_l2_slot *s = c->lru_head; s; s = s->next) {
        if (!s->dirty)
            continue;
        s->refs++;
        pthread_mutex_unlock(&c->lock);
        int r = qcow2_pwrite(img, s->data, q->cluster_size, s->l2_off, "L2 table");
        pthread_mutex_lock(&c->lock);
        s->refs--;
        if (r < 0) {
            pthread_mutex_unlock(&c->lock);
            return r;
        }
        s->dirty = false;
        c->dirty--;
        written++;
    }
    pthread_mutex_unlock(&c->lock);
    return written;
}

/* ---- the map ---- */

/* Where the L2 table for guest offset `off` is: 0 when the L1 entry is empty. */
static int l2_offset_for(struct img *img, struct qcow2 *q, uint64_t off, uint64_t *l2_off)
{
    uint64_t l1_index = off >> (q->geom.cluster_bits + q->l2_bits);
    if (l1_index >= q->l1_size)   /* open checked that L1 covers img->size */
        return img_error(img, EIO, "guest offset 0x%llx is beyond the L1 table",
                         (unsigned long long)off);
    *l2_off = q->l1[l1_index] & QCOW2_OFFSET_MASK;
    if (*l2_off & (q->cluster_size - 1))
        return img_error(img, EIO, "L2 table offset 0x%llx (L1 index %llu) is not cluster "
                         "aligned", (unsigned long long)*l2_off, (unsigned long long)l1_index);
    return 0;
}

/* Decode the (sub)cluster `unit` (global index in units of 1 << unit_bits). */
static int decode_unit(struct img *img, const struct qcow2 *q, const uint8_t *table,
                       uint64_t unit, struct qcow2_mapping *m)
{
    unsigned sub_bits = q->geom.cluster_bits - q->unit_bits;
    uint64_t index = (unit >> sub_bits) & ((1ull << q->l2_bits) - 1);
    unsigned sub = (unsigned)(unit & ((1u << sub_bits) - 1));
    const uint8_t *e = table + index * q->entry_bytes;
    uint64_t entry = get_be64(e);
    uint64_t bitmap = q->geom.extended_l2 ? get_be64(e + 8) : 0;
    const char *why = "is invalid";
    uint64_t guest = unit << q->unit_bits;
    if (qcow2_decode_l2(&q->geom, entry, bitmap, sub, m, &why) < 0)
        return img_error(img, EIO, "L2 entry 0x%016llx for guest offset 0x%llx %s",
                         (unsigned long long)entry, (unsigned long long)guest, why);
    /* An external data file maps every cluster to its own guest offset. */
    if (m->type == QCOW2_NORMAL && q->geom.data_file && m->host_off != guest)
        return img_error(img, EIO, "data file offset 0x%llx does not match guest offset "
                         "0x%llx", (unsigned long long)m->host_off, (unsigned long long)guest);
    return 0;
}

/* Does unit `next` continue the run that `first` started `done` bytes ago? */
static bool continues_run(const struct qcow2_mapping *first, const struct qcow2_mapping *next,
                          uint64_t done)
{
    if (next->type != first->type || first->type == QCOW2_COMPRESSED)
        return false;
    return first->type != QCOW2_NORMAL || next->host_off == first->host_off + done;
}

static void fill_extent(const struct qcow2 *q, const struct qcow2_mapping *m, uint64_t into,
                        struct img_extent *ext)
{
    switch (m->type) {
    case QCOW2_NORMAL:
        ext->kind = IMG_DATA;
        ext->fd = q->data_fd;
        ext->host_off = m->host_off + into;
        break;
    case QCOW2_COMPRESSED:
        ext->kind = IMG_DATA;
        ext->fd = -1;
        ext->compressed = true;
        break;
    case QCOW2_ZERO:
        ext->kind = IMG_ZERO;
        ext->fd = -1;
        break;
    case QCOW2_UNALLOCATED:
        ext->kind = IMG_UNALLOCATED;
        ext->fd = -1;
        break;
    }
}

/* Plain data must lie in its file.  The splice path reads host bytes without
 * going through img_pread, so a short file would read as a silent short
 * read; the map says so instead.  A run that the file ends inside is cut at
 * the end of the file, and the next question gets the error. */
static int clip_to_file(struct img *img, struct qcow2 *q, struct img_extent *ext)
{
    if (qcow2_fits(q->data_fd, &q->data_size, ext->host_off + ext->len))
        return 0;
    uint64_t size = (uint64_t)__atomic_load_n(&q->data_size, __ATOMIC_RELAXED);
    if (ext->host_off >= size)
        return img_error(img, EIO, "data of guest offset 0x%llx at 0x%llx lies past the end "
                         "of the %s", (unsigned long long)ext->off,
                         (unsigned long long)ext->host_off,
                         q->geom.data_file ? "data file" : "file");
    ext->len = size - ext->host_off;
    return 0;
}

/* The first run of [off, stop) inside one L2 table: same kind, and for plain
 * data contiguous host bytes, so a long read costs one lookup. */
static int scan_table(struct img *img, struct qcow2 *q, const uint8_t *table,
                      uint64_t off, uint64_t stop, struct img_extent *ext)
{
    uint64_t unit = off >> q->unit_bits;
    uint64_t run_start = unit << q->unit_bits;
    struct qcow2_mapping first, next;
    int r = decode_unit(img, q, table, unit, &first);
    if (r < 0)
        return r;
    uint64_t run_end = run_start + (1ull << q->unit_bits);
    if (first.type == QCOW2_COMPRESSED)   /* the whole cluster, alone */
        run_end = (off >> q->geom.cluster_bits << q->geom.cluster_bits) + q->cluster_size;
    while (run_end < stop && first.type != QCOW2_COMPRESSED) {
        /* A bad entry further on ends the run; it reports when reached. */
        if (decode_unit(img, q, table, run_end >> q->unit_bits, &next) < 0)
            break;
        if (!continues_run(&first, &next, run_end - run_start))
            break;
        run_end += 1ull << q->unit_bits;
    }
    ext->off = off;
    ext->len = (run_end < stop ? run_end : stop) - off;
    fill_extent(q, &first, off - run_start, ext);
    if (ext->kind == IMG_DATA && ext->fd >= 0)
        return clip_to_file(img, q, ext);
    return 0;
}

/* An unallocated run that reaches the end of its L2 table goes on over the
 * following empty L1 entries: a sparse disk maps in a few answers. */
static void extend_over_empty_l1(const struct qcow2 *q, struct img_extent *ext, uint64_t stop)
{
    unsigned shift = q->geom.cluster_bits + q->l2_bits;
    uint64_t end = ext->off + ext->len;
    if (ext->kind != IMG_UNALLOCATED || (end & ((1ull << shift) - 1)))
        return;
    /* end < stop <= img->size, which open checked that L1 covers. */
    while (end < stop && (q->l1[end >> shift] & QCOW2_OFFSET_MASK) == 0)
        end += 1ull << shift;
    ext->len = (end < stop ? end : stop) - ext->off;
}

static int map_locked(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    struct qcow2 *q = img->priv;
    unsigned shift = q->geom.cluster_bits + q->l2_bits;   /* bytes per L2 table */
    uint64_t stop = off + len;
    uint64_t table_end = ((off >> shift) + 1) << shift;
    uint64_t l2_off;
    int r = l2_offset_for(img, q, off, &l2_off);
    if (r < 0)
        return r;
    if (l2_off == 0) {
        /* No L2 table: all of it defers to the backing file. */
        ext->off = off;
        ext->len = (table_end < stop ? table_end : stop) - off;
        ext->kind = IMG_UNALLOCATED;
        ext->fd = -1;
    } else {
        struct qcow2_l2_slot *slot;
        r = qcow2_l2_get(img, q, l2_off, &slot);
        if (r < 0)
            return r;
        r = scan_table(img, q, slot->data, off, table_end < stop ? table_end : stop, ext);
        qcow2_l2_put(q, slot);
        if (r < 0)
            return r;
    }
    extend_over_empty_l1(q, ext, stop);
    return 0;
}

int qcow2_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    struct qcow2 *q = img->priv;
    if (!q->w)
        return map_locked(img, off, len, ext);
    pthread_rwlock_rdlock(&q->meta);
    int r = map_locked(img, off, len, ext);
    pthread_rwlock_unlock(&q->meta);
    return r;
}

int qcow2_lookup(struct img *img, uint64_t off, struct qcow2_mapping *m)
{
    struct qcow2 *q = img->priv;
    if (!q->w)
        return qcow2_lookup_locked(img, off, m);
    pthread_rwlock_rdlock(&q->meta);
    int r = qcow2_lookup_locked(img, off, m);
    pthread_rwlock_unlock(&q->meta);
    return r;
}

int qcow2_lookup_locked(struct img *img, uint64_t off, struct qcow2_mapping *m)
{
    struct qcow2 *q = img->priv;
    uint64_t l2_off;
    int r = l2_offset_for(img, q, off, &l2_off);
    if (r < 0)
        return r;
    if (l2_off == 0) {
        memset(m, 0, sizeof(*m));
        m->type = QCOW2_UNALLOCATED;
        return 0;
    }
    struct qcow2_l2_slot *slot;
    r = qcow2_l2_get(img, q, l2_off, &slot);
    if (r < 0)
        return r;
    r = decode_unit(img, q, slot->data, off >> q->unit_bits, m);
    qcow2_l2_put(q, slot);
    return r;
}
