/* VMDK: shared declarations of the descriptor parser (descriptor.c), the
 * hosted sparse extent reader (sparse.c) and the driver (vmdk.c).
 * Facts from VMware's "Virtual Disk Format 1.1" and QEMU's behaviour. */
#ifndef IMGFS_VMDK_H
#define IMGFS_VMDK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

#endif
