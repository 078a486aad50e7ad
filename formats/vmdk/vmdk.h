/* VMDK: shared declarations of the descriptor parser (descriptor.c), the
 * hosted sparse extent reader (sparse.c) and the driver (vmdk.c).
 * Facts from VMware's "Virtual Disk Format 1.1" and QEMU's behaviour. */
#ifndef IMGFS_VMDK_H
#define IMGFS_VMDK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/format.h"
#include "core/img.h"

#define VMDK_SECTOR 512u
/* A disk of more extents than this is not something VMware writes (a 2 TB
 * twoGbMaxExtent disk has ~1000); each extent costs a file descriptor. */
#define VMDK_MAX_EXTENTS 10000
/* QEMU reads at most 1 MiB of descriptor; real ones are under 2 KiB. */
#define VMDK_MAX_DESC_BYTES (1u << 20)
/* 32 PiB: any size field beyond this is corruption, and keeping sums far
 * below 2^64 means no overflow checks are needed after the parse. */
#define VMDK_MAX_DISK_BYTES (UINT64_C(1) << 55)
#define VMDK_MAX_NAME 4096

/* ---- descriptor (descriptor.c) ---- */

enum vmdk_access { VMDK_RW, VMDK_RDONLY, VMDK_NOACCESS };
enum vmdk_ext_type { VMDK_EXT_SPARSE, VMDK_EXT_FLAT, VMDK_EXT_ZERO };

struct vmdk_desc_extent {
    enum vmdk_access access;
    enum vmdk_ext_type type;
    uint64_t sectors;
    uint64_t flat_offset;   /* in sectors; FLAT only */
    char *file;             /* NULL for ZERO */
};

struct vmdk_desc {
    char create_type[64];
    bool has_cid, has_parent_cid;
    uint32_t cid, parent_cid;   /* parentCID ffffffff = no parent */
    char *parent_hint;          /* parentFileNameHint, or NULL */
    struct vmdk_desc_extent *extents;
    size_t n_extents;
};

/* Parse descriptor text of `len` bytes (it ends early at a NUL).  With
 * want_extents false, extent lines are skipped: the descriptor embedded in
 * a monolithic sparse file describes that file itself.  Returns 0, or a
 * negative errno with one line in `err`.  Free with vmdk_desc_free even on
 * failure. */
int vmdk_desc_parse(const char *text, size_t len, bool want_extents,
                    struct vmdk_desc *d, char *err, size_t errlen);
void vmdk_desc_free(struct vmdk_desc *d);
/* Does this text look like a VMDK descriptor?  0 or 100. */
int vmdk_desc_probe(const uint8_t *head, size_t len);
/* createType values whose descriptor we open. */
bool vmdk_create_type_supported(const char *create_type);

/* ---- hosted sparse extent (sparse.c) ---- */

#define VMDK_HEADER_SIZE 512u

struct vmdk_sparse_header {
    uint32_t version, flags;
    uint64_t capacity;          /* sectors */
    uint64_t grain_sectors;
    uint64_t desc_offset, desc_size;   /* sectors */
    uint32_t gtes_per_gt;
    uint64_t rgd_offset, gd_offset;    /* sectors */
    uint64_t grain_offset;             /* sectors ("overhead") */
    uint16_t compress_algorithm;
    bool check_bytes_ok;
};

bool vmdk_is_sparse_magic(const uint8_t *buf, size_t len);
bool vmdk_is_cowd_magic(const uint8_t *buf, size_t len);
/* Decode the 512-byte header (magic already checked). */
void vmdk_sparse_header_decode(const uint8_t *buf, struct vmdk_sparse_header *h);

struct vmdk_gt_slot {
    uint32_t gt_index;
    bool valid;
    uint32_t *gtes;          /* gtes_per_gt entries, host order */
};

struct vmdk_sparse {
    int fd;
    const char *name;        /* for messages; owned by the caller */
    uint64_t file_size;
    struct vmdk_sparse_header h;
    uint64_t grain_bytes;
    uint64_t size;           /* capacity in bytes */
    bool compressed, has_marker, zero_grain;
    uint32_t *gd;            /* grain directory: GT sectors, host order */
    uint32_t gd_entries;
    /* Grain tables are loaded on demand into a small direct-mapped cache:
     * map() may be called from many threads, and a 2 TB disk has 128 MiB
     * of tables. */
    pthread_mutex_t gt_lock;      /* guards slots */
    struct vmdk_gt_slot *slots;
    uint32_t n_slots;
    /* The last inflated grain: readers of a compressed disk go through it
     * in small pieces, and inflating a grain per 4 KiB read is wasteful. */
    pthread_mutex_t grain_lock;   /* guards the three fields below */
    uint8_t *grain_buf;
    uint64_t cached_grain;
    bool grain_cached;
    /* ---- write side (write.c, stream.c); unused when read-only ---- */
    pthread_mutex_t write_lock;   /* one writer allocates at a time */
    uint32_t *rgd;                /* redundant GD, or NULL */
    uint64_t alloc_end;           /* where the next grain or table goes */
    struct vmdk_stream *stream;   /* streamOptimized writer, or NULL */
};

/* Read and validate the sparse header of `fd` (one extent, or the image
 * itself) and its grain directory.  `name` names the file in messages. */
int vmdk_sparse_open(struct img *img, int fd, const char *name, struct vmdk_sparse **out);
void vmdk_sparse_close(struct vmdk_sparse *sp);
/* Map [off, off+len) of this extent (extent-relative); fills ext->len,
 * kind, fd, host_off, compressed. */
int vmdk_sparse_map(struct img *img, struct vmdk_sparse *sp, uint64_t off, uint64_t len,
                    struct img_extent *ext);
/* Read compressed grains covering [off, off+len) (extent-relative). */
int vmdk_sparse_read(struct img *img, struct vmdk_sparse *sp, void *buf, size_t len,
                     uint64_t off);

/* ---- shared by the read and the write side ---- */

#define VMDK_FLAG_NL_DETECT   (1u << 0)
#define VMDK_FLAG_RGD         (1u << 1)
#define VMDK_FLAG_ZERO_GRAIN  (1u << 2)
#define VMDK_FLAG_COMPRESSED  (1u << 16)
#define VMDK_FLAG_MARKERS     (1u << 17)
#define VMDK_GD_AT_END        UINT64_MAX
#define VMDK_COMPRESS_DEFLATE 1
#define VMDK_GTE_ZEROED       1u
#define VMDK_MARKER_SIZE      12u   /* lba u64, size u32 */

/* Encode a header (magic included) into 512 bytes. */
void vmdk_sparse_header_encode(uint8_t *buf, const struct vmdk_sparse_header *h);
/* Grain table entry of `grain` as this layer sees it now (tables, or the
 * stream writer's tables while it writes). */
int vmdk_sparse_gte(struct img *img, struct vmdk_sparse *sp, uint64_t grain, uint32_t *gte);
/* Replace the cached grain table entry after a write (no I/O). */
void vmdk_sparse_cache_gte(struct vmdk_sparse *sp, uint32_t gt_index, uint32_t in_gt,
                           uint32_t gte);

/* ---- the driver's view of a disk (vmdk.c) ---- */

struct vmdk_extent {
    uint64_t start, len;       /* guest bytes */
    enum vmdk_ext_type type;
    enum vmdk_access access;
    int fd;                    /* companion fd (or the image's own), -1 for ZERO */
    uint64_t flat_off;         /* FLAT: bytes into the file */
    uint64_t file_size;        /* FLAT: bytes past it read as zeros */
    struct vmdk_sparse *sp;    /* SPARSE */
    char *name;                /* for messages */
};

struct vmdk {
    struct vmdk_desc desc;
    struct vmdk_extent *ext;
    size_t n_ext;
    /* parentCID is checked against the parent's CID on the first question
     * that reaches the parent (the core opens the parent after us). */
    pthread_mutex_t cid_lock;
    int cid_state;             /* 0 unchecked, 1 good, -1 mismatch */
};

/* ---- check (check.c) ---- */

/* Every table and grain of each hosted sparse extent inside its file, no
 * two sharing a sector.  No repair. */
int vmdk_check(struct img *img, struct img_check *res, unsigned repair);

/* ---- create (create.c) ---- */

struct img_create_opts;
int vmdk_create(const char *path, const struct img_create_opts *o, char *err, size_t errlen);
/* Its option list, for the format table. */
extern const struct img_create_option vmdk_create_options[];

/* ---- write side of hosted sparse and flat extents (write.c) ---- */

/* Get a sparse extent ready for writes (img opened read-write). */
int vmdk_sparse_prepare_write(struct img *img, struct vmdk_sparse *sp);
/* Write / zero [off, off+len) of one extent (extent-relative); `guest`
 * is the extent's start on the disk, for copy-on-write from the backing. */
int vmdk_sparse_write(struct img *img, struct vmdk_sparse *sp, uint64_t guest,
                      const uint8_t *buf, uint64_t len, uint64_t off);
int vmdk_sparse_zero(struct img *img, struct vmdk_sparse *sp, uint64_t guest, uint64_t len,
                     uint64_t off);
int vmdk_sparse_flush(struct img *img, struct vmdk_sparse *sp);

/* ---- streamOptimized writer (stream.c) ---- */

/* Set up the writer on an extent that holds no grain yet; one that does
 * is left sealed (writes are refused with a reason). */
int vmdk_stream_open(struct img *img, struct vmdk_sparse *sp);
void vmdk_stream_free(struct vmdk_sparse *sp);
/* Is the stream being written (its tables live in memory)? */
bool vmdk_stream_lookup(struct vmdk_sparse *sp, uint64_t grain, uint32_t *gte);
int vmdk_stream_write(struct img *img, struct vmdk_sparse *sp, uint64_t guest,
                      const uint8_t *buf, uint64_t len, uint64_t off);
int vmdk_stream_zero(struct img *img, struct vmdk_sparse *sp, uint64_t guest, uint64_t len,
                     uint64_t off);
/* Seal the open grain, write queued grains, then the tables, footer and
 * end-of-stream marker. */
int vmdk_stream_finish(struct img *img, struct vmdk_sparse *sp);
/* The metadata that ends a stream: grain tables (gts[i] NULL = empty),
 * grain directory, footer (a copy of `h` with the GD offset) and EOS
 * marker, built at byte `pos` (sector-aligned).  Returns a malloc'd
 * buffer of *len bytes. */
uint8_t *vmdk_stream_tail(const struct vmdk_sparse_header *h, uint32_t *const *gts,
                          uint32_t gd_entries, uint64_t pos, size_t *len);

#endif
