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

struct qcow2_l2_slot;
struct qcow2_zcache;

struct qcow2_l2_cache {
    pthread_mutex_t lock;
    struct qcow2_l2_slot **buckets;   /* hash on the table's host offset */
    unsigned n_buckets;               /* power of two */
    struct qcow2_l2_slot *lru_head;   /* most recently used */
    struct qcow2_l2_slot *lru_tail;
    unsigned count, max;
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

/* info.c */
int qcow2_info(struct img *img, struct img_info *info);

/* read.c */
struct qcow2_zcache;
int qcow2_zcache_init(struct qcow2 *q);
void qcow2_zcache_destroy(struct qcow2 *q);
int qcow2_read(struct img *img, void *buf, size_t len, uint64_t off);

extern const struct img_format img_format_qcow2;

#endif
