/* qcow2 driver internals, shared by the files of formats/qcow2/ and by the
 * unit tests (the decoders are pure functions so tests can call them).
 * Facts come from QEMU's docs/interop/qcow2.txt. */
#ifndef IMGFS_QCOW2_H
#define IMGFS_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/compress.h"
#include "core/format.h"

#define QCOW2_MAGIC             0x514649fbu   /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN     72
#define QCOW2_V3_MIN_HEADER_LEN 104
#define QCOW2_MIN_CLUSTER_BITS  9
#define QCOW2_MAX_CLUSTER_BITS  21            /* QEMU's limit: 2 MiB */
#define QCOW2_MIN_EXT_L2_CLUSTER_BITS 14      /* 32 subclusters of >= 512 B */
#define QCOW2_MAX_BACKING_NAME  1023
#define QCOW2_MAX_L1_BYTES      (32u << 20)   /* QEMU refuses larger L1 tables */
#define QCOW2_MAX_REFCOUNT_ORDER 6
#define QCOW2_SUBCLUSTERS       32

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY        (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT      (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2        (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN        0x1full
/* Autoclear bits. */
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

/* Header extension types. */
#define QCOW2_EXT_END           0x00000000u
#define QCOW2_EXT_BACKING_FMT   0xe2792acau
#define QCOW2_EXT_FEATURE_NAMES 0x6803f857u
#define QCOW2_EXT_DATA_FILE     0x44415441u
#define QCOW2_FEATURE_NAME_ENTRY 48
#define QCOW2_MAX_BACKING_FMT   15            /* QEMU keeps it in char[16] */

/* Table entry bits. */
#define QCOW2_OFFSET_MASK       0x00fffffffffffe00ull  /* bits 9..55 */
#define QCOW2_OFLAG_COPIED      (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED  (1ull << 62)
#define QCOW2_OFLAG_ZERO        (1ull << 0)
/* Bits the spec reserves (must be zero): check reports them as qemu does. */
#define QCOW2_L1E_RESERVED      0x7f000000000001ffull  /* bits 0..8, 56..62 */
#define QCOW2_L2E_RESERVED      0x3f000000000001feull  /* bits 1..8, 56..61 */

enum qcow2_compression { QCOW2_COMPRESSION_ZLIB = 0, QCOW2_COMPRESSION_ZSTD = 1 };

/* The fixed header, host byte order. */
struct qcow2_header {
    uint32_t magic, version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible, compatible, autoclear;   /* v3; 0 for v2 */
    uint32_t refcount_order;                        /* v2: 4 */
    uint32_t header_length;                         /* v2: 72 */
    uint8_t compression_type;                       /* 0 unless present */
};

/* What the mapping decoders need to know about an image. */
struct qcow2_geom {
    unsigned cluster_bits;
    bool extended_l2;       /* 128-bit L2 entries with subcluster bitmaps */
    bool data_file;         /* external data file: host offset 0 is legal */
    bool v2;                /* version 2: no zero flag yet */
};

/* What one (sub)cluster is, from this layer's point of view. */
enum qcow2_type {
    QCOW2_UNALLOCATED,      /* defer to the backing file */
    QCOW2_ZERO,             /* reads as zeros */
    QCOW2_NORMAL,           /* plain bytes at host_off */
    QCOW2_COMPRESSED,       /* comp_len bytes at comp_off inflate to a cluster */
};

struct qcow2_mapping {
    enum qcow2_type type;
    uint64_t host_off;      /* NORMAL: host offset of this (sub)cluster */
    uint64_t comp_off;      /* COMPRESSED: byte offset of the stream */
    uint64_t comp_len;      /* COMPRESSED: bytes the entry covers (an upper bound) */
};

/* Decode (sub)cluster `sub` of an L2 entry (`bitmap` is the second word of an
 * extended entry, 0 otherwise; `sub` is 0 without extended L2).  Returns 0, or
 * -EIO with *why naming the fault when the entry is invalid. */
int qcow2_decode_l2(const struct qcow2_geom *g, uint64_t entry, uint64_t bitmap,
                    unsigned sub, struct qcow2_mapping *m, const char **why);

/* The offset/length split of a compressed descriptor. */
void qcow2_decode_compressed(unsigned cluster_bits, uint64_t entry,
                             uint64_t *comp_off, uint64_t *comp_len);

/* Parse the fixed header from the first `len` bytes of the file.  Returns 0,
 * or -EINVAL with *why set when the bytes are not a qcow2 header we can even
 * read (short, bad magic).  Validation is qcow2_check_header's job. */
int qcow2_parse_header(const uint8_t *buf, size_t len, struct qcow2_header *h,
                       const char **why);

/* ---- driver state ---- */

struct qcow2_zcache;
struct qcow2_writer;

/* One cached L2 table.  Readers only read `data`; the writer changes it
 * under q->meta (write-locked) and marks it dirty, and a dirty table stays
 * in the cache until qcow2_l2_writeback has put it on disk. */
struct qcow2_l2_slot {
    uint64_t l2_off;                 /* key: host offset of the table */
    uint8_t *data;                   /* one cluster, entries big-endian */
    unsigned refs;                   /* users working outside the lock */
    bool evicted;                    /* left the cache while in use */
    bool dirty;                      /* changed since read or last written */
    struct qcow2_l2_slot *hnext;     /* hash chain */
    struct qcow2_l2_slot *prev, *next;   /* LRU list, head = newest */
};

struct qcow2_l2_cache {
    pthread_mutex_t lock;
    struct qcow2_l2_slot **buckets;   /* hash on the table's host offset */
    unsigned n_buckets;               /* power of two */
    struct qcow2_l2_slot *lru_head;   /* most recently used */
    struct qcow2_l2_slot *lru_tail;
    unsigned count, max;
    unsigned dirty;                   /* tables waiting for writeback */
    uint64_t hits, misses;            /* for tests and stats */
};

struct qcow2 {
    struct qcow2_header h;
    struct qcow2_geom geom;
    uint32_t cluster_size;
    unsigned l2_bits;          /* log2 of the entries per L2 table */
    unsigned entry_bytes;      /* 8, or 16 with extended L2 */
    unsigned unit_bits;        /* log2 of the mapping unit: (sub)cluster */
    uint64_t *l1;              /* host byte order */
    uint32_t l1_size;
    int data_fd;               /* where guest data lives: img->fd or the data file */
    char *data_file_name;      /* as recorded in the image, for info */
    bool raw_data_file;        /* the data file is also a raw image of the disk;
                                  reads still follow L2 (QEMU keeps the two in
                                  step), a writer will have to as well */
    enum decompress_kind decompress;
    int64_t file_size;         /* image file; refreshed before saying "past EOF" */
    int64_t data_size;         /* data file (== file_size without one) */
    struct qcow2_l2_cache cache;
    struct qcow2_zcache *zcache;   /* recently decompressed clusters (read.c) */
    /* Writable images only (q->w != NULL): readers take `meta` shared
     * around table lookups, the writer takes it exclusively for a whole
     * write, so nobody decodes a half-changed table. */
    pthread_rwlock_t meta;
    struct qcow2_writer *w;
    uint64_t snapshots_size;        /* bytes of the snapshot table (check) */
};

/* header.c: read, validate and apply the headers onto img and q. */
int qcow2_load_header(struct img *img, struct qcow2 *q, const struct img_open_opts *o);

/* map.c */
int qcow2_cache_init(struct qcow2_l2_cache *c, uint32_t cluster_size);
void qcow2_cache_destroy(struct qcow2_l2_cache *c);
int qcow2_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext);
/* The mapping of the single (sub)cluster holding guest offset `off`. */
int qcow2_lookup(struct img *img, uint64_t off, struct qcow2_mapping *m);
/* Does [0, end) lie inside the file?  Asks fstat again before saying no, so
 * that a file grown since open is not refused on a stale size. */
bool qcow2_fits(int fd, int64_t *cached_size, uint64_t end);

/* The cache as the writer uses it (callers hold q->meta exclusively). */
int qcow2_l2_get(struct img *img, struct qcow2 *q, uint64_t l2_off, struct qcow2_l2_slot **out);
void qcow2_l2_put(struct qcow2 *q, struct qcow2_l2_slot *s);
/* A fresh all-zero table at l2_off, already dirty and pinned. */
int qcow2_l2_new(struct qcow2 *q, uint64_t l2_off, struct qcow2_l2_slot **out);
void qcow2_l2_mark_dirty(struct qcow2 *q, struct qcow2_l2_slot *s);
/* Write every dirty table (no sync); returns how many, or -errno. */
int qcow2_l2_writeback(struct img *img, struct qcow2 *q);
/* Lookup without taking q->meta (the writer already holds it). */
int qcow2_lookup_locked(struct img *img, uint64_t off, struct qcow2_mapping *m);

/* info.c */
int qcow2_info(struct img *img, struct img_info *info);

/* read.c */
struct qcow2_zcache;
int qcow2_zcache_init(struct qcow2 *q);
void qcow2_zcache_destroy(struct qcow2 *q);
int qcow2_read(struct img *img, void *buf, size_t len, uint64_t off);
/* A new compressed stream now lives at comp_off: drop what was cached there. */
void qcow2_zcache_forget(struct qcow2 *q, uint64_t comp_off);
/* Bytes [into, into+len) of the compressed cluster `m` (no q->meta taken). */
int qcow2_read_compressed(struct img *img, struct qcow2 *q, const struct qcow2_mapping *m,
                          void *buf, size_t len, size_t into);

/* ---- the write side ---- */

/* Entry of the refcount table: the host offset of one refcount block. */
#define QCOW2_REFT_OFFSET_MASK  0xfffffffffffffe00ull
/* Clusters the check will count at most (2 bytes each in memory). */
#define QCOW2_CHECK_MAX_CLUSTERS (1ull << 28)

/* A refcount block in memory; NULL data = not loaded (or not present). */
struct qcow2_refblock {
    uint8_t *data;
    bool dirty;
};

struct qcow2_writer {
    /* refcount table (host order) and the blocks it names */
    uint64_t *rt;
    uint64_t rt_entries;            /* capacity: rt_clusters * cluster_size / 8 */
    uint64_t rt_offset;
    uint32_t rt_clusters;
    uint64_t rt_dirty_lo, rt_dirty_hi;   /* entries to write, [lo, hi) */
    struct qcow2_refblock *rb;      /* rt_entries of them */
    unsigned rc_bits;               /* 1 << refcount_order */
    uint64_t rc_max;                /* largest storable refcount */
    uint64_t rb_entries;            /* refcounts per block */
    uint64_t free_hint;             /* no free cluster below this one */
    uint64_t top;                   /* one past every cluster in use */
    /* Clusters whose refcount drops once the tables that referenced them
     * are on disk (see the ordering rules in write.c). */
    uint64_t *pending;
    size_t n_pending, cap_pending;
    uint32_t l1_dirty_lo, l1_dirty_hi;   /* L1 entries to write, [lo, hi) */
    uint64_t comp_next;             /* next free byte after the last compressed
                                       cluster, 0 = start a new host cluster */
    bool broken;                    /* a metadata write failed: stop writing */
    uint8_t *scratch;               /* one cluster for copy-on-write */
};

/* refcount.c */
int qcow2_writer_init(struct img *img, struct qcow2 *q);
void qcow2_writer_free(struct qcow2 *q);
int qcow2_rc_get(struct img *img, struct qcow2 *q, uint64_t cluster, uint64_t *value);
int qcow2_rc_set(struct img *img, struct qcow2 *q, uint64_t cluster, uint64_t value);
/* n contiguous free clusters, now with refcount 1; *host is the first one's offset. */
int qcow2_alloc_clusters(struct img *img, struct qcow2 *q, uint64_t n, uint64_t *host);
/* Claim the specific cluster if free (compressed data spilling over). */
int qcow2_alloc_cluster_at(struct img *img, struct qcow2 *q, uint64_t cluster, bool *got);
int qcow2_add_ref(struct img *img, struct qcow2 *q, uint64_t cluster);
/* Drop one reference of every cluster touched by [off, off+len) later. */
int qcow2_free_later(struct img *img, struct qcow2 *q, uint64_t off, uint64_t len);
/* Dirty refcount blocks to disk, barrier, new table entries, barrier. */
int qcow2_rc_writeback(struct img *img, struct qcow2 *q);
/* The queued drops; callers made sure nothing on disk needs them any more. */
int qcow2_apply_pending(struct img *img, struct qcow2 *q);
int qcow2_sync(struct img *img);
int qcow2_pwrite(struct img *img, const void *buf, size_t len, uint64_t off, const char *what);

/* write.c */
int qcow2_write(struct img *img, const void *buf, size_t len, uint64_t off);
int qcow2_write_compressed(struct img *img, const void *buf, size_t len, uint64_t off);
int qcow2_write_zeroes(struct img *img, uint64_t off, uint64_t len, bool may_unmap);
/* Whole (sub)clusters of [off, off+len) become unallocated; see write.c. */
int qcow2_discard(struct img *img, uint64_t off, uint64_t len);
int qcow2_flush(struct img *img);
/* The metadata writeback of flush, for callers already holding q->meta. */
int qcow2_flush_locked(struct img *img, struct qcow2 *q);
int qcow2_open_writer(struct img *img, struct qcow2 *q);
/* Allocate (without writing) the clusters of [off, off+len), which lies in
 * one L2 table of a fresh image; *end grows to the end of what was placed. */
int qcow2_preallocate_range(struct img *img, struct qcow2 *q, uint64_t off, uint64_t len,
                            uint64_t *end);

/* header_write.c */
int qcow2_set_backing(struct img *img, const char *file, const char *fmt);
int qcow2_resize(struct img *img, uint64_t new_size, bool shrink);
/* The feature name table extension as QEMU writes it (type, length, 8
 * entries of 48 bytes), into `out`; returns its length. */
size_t qcow2_feature_table(uint8_t *out);
#define QCOW2_FEATURE_TABLE_EXT_BYTES (8 + 8 * QCOW2_FEATURE_NAME_ENTRY)
/* Lay out the first cluster in `buf` (cap bytes, zeroed by the caller): the
 * fixed header bytes `fixed` (header_length of them), a backing format
 * extension when backing_fmt, the extensions `exts` (already padded), the
 * end marker, then the backing name; patches the backing name's offset and
 * size into the fixed part.  Returns the bytes used, or -ENOSPC. */
int qcow2_build_header(uint8_t *buf, size_t cap, const uint8_t *fixed, size_t fixed_len,
                       const uint8_t *exts, size_t exts_len, const char *backing,
                       const char *backing_fmt);

/* create.c */
int qcow2_create(const char *path, const struct img_create_opts *o, char *err, size_t errlen);
/* Its option list, for the format table. */
extern const struct img_create_option qcow2_create_options[];

/* check.c */
int qcow2_check(struct img *img, struct img_check *res, unsigned repair);

extern const struct img_format img_format_qcow2;

#endif
