/* vdi: VirtualBox Disk Image, read and write side.
 *
 * A 512-byte little-endian header, a block map (one u32 per guest block,
 * naming the block's slot in the data area) and the data area.  The whole
 * block map is loaded at open.  It changes only when an image opened for
 * writing allocates a block; then map() and the writers share s->lock.
 *
 * Behaviour follows qemu 7.2 (block/vdi.c), our oracle:
 *  - only version 1.1, 512-byte sectors and 1 MiB blocks are accepted;
 *  - a non-null link or parent UUID (a snapshot / differencing image) is
 *    refused: its parent is found by UUID, which qemu does not do either;
 *  - a disk size that is not a multiple of 512 is rounded up
 *    ("VBoxManage convertfromraw" writes such sizes);
 *  - 0xffffffff (never allocated) and 0xfffffffe (discarded) both read as
 *    zeros; we report the first as UNALLOCATED and the second as ZERO, and
 *    both are "data": false in qemu-img map.
 * Stricter than qemu: every allocated block must lie inside the file, and
 * image types other than 1 (dynamic) and 2 (static) are refused.
 * Two guest blocks naming the same data slot are tolerated: reading is
 * still well defined (both show the same bytes), as in qemu. */
#include "core/format.h"
#include "core/bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define VDI_HEADER_SIZE     512
#define VDI_SIGNATURE_OFF   0x40
#define VDI_SIGNATURE       0xbeda107fu
#define VDI_VERSION_1_1     0x00010001u
#define VDI_TYPE_DYNAMIC    1
#define VDI_TYPE_STATIC     2
#define VDI_SECTOR_SIZE     512
#define VDI_BLOCK_SIZE      (1u << 20)   /* the only size qemu accepts */
#define VDI_UNALLOCATED     0xffffffffu
#define VDI_DISCARDED       0xfffffffeu
/* qemu's limit: the block map, rounded to a sector, must fit in an int. */
#define VDI_BLOCKS_MAX      ((0x80000000u - VDI_SECTOR_SIZE) / 4)

struct vdi_header {
    uint32_t signature, version, image_type;
    uint32_t offset_bmap, offset_data, sector_size;
    uint64_t disk_size;
    uint32_t block_size, blocks_in_image, blocks_allocated;
    bool link_uuid_set, parent_uuid_set;
};

/* Header fields the write side rewrites or qemu's create sets. */
#define VDI_OFF_BLOCKS_ALLOCATED 0x184
#define VDI_CREATE_HEADER_SIZE   0x180     /* what qemu records */
#define VDI_CREATE_BMAP_OFFSET   0x200     /* right after the header */

struct vdi {
    uint32_t *bmap;          /* host-endian copy of the block map */
    uint32_t blocks;
    uint32_t block_size;
    uint64_t offset_data;
    uint32_t offset_bmap;
    uint32_t blocks_allocated;   /* the header's count */
    uint32_t next_slot;          /* first data slot no entry uses or may use */
    uint8_t *block_buf;          /* one block, for allocations (under lock) */
    pthread_mutex_t lock;        /* bmap, counts and block_buf, when writable */
};

static int vdi_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)filename;
    if (len < VDI_HEADER_SIZE)
        return 0;
    return get_le32(head + VDI_SIGNATURE_OFF) == VDI_SIGNATURE ? 100 : 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

static void vdi_decode_header(const uint8_t *b, struct vdi_header *h)
{
    h->signature = get_le32(b + 0x40);
    h->version = get_le32(b + 0x44);
    h->image_type = get_le32(b + 0x4c);
    h->offset_bmap = get_le32(b + 0x154);
    h->offset_data = get_le32(b + 0x158);
    h->sector_size = get_le32(b + 0x168);
    h->disk_size = get_le64(b + 0x170);
    h->block_size = get_le32(b + 0x178);
    h->blocks_in_image = get_le32(b + 0x180);
    h->blocks_allocated = get_le32(b + VDI_OFF_BLOCKS_ALLOCATED);
    h->link_uuid_set = !all_zero(b + 0x1a8, 16);
    h->parent_uuid_set = !all_zero(b + 0x1b8, 16);
}

/* Check the header fields that do not depend on the file; the order of the
 * checks is qemu's, so that the same image gets the same complaint. */
static int vdi_check_header(struct img *img, struct vdi_header *h)
{
    if (h->signature != VDI_SIGNATURE)
        return img_error(img, EINVAL, "not a VDI image (signature 0x%08x)", h->signature);
    if (h->disk_size > (uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE)
        return img_error(img, ENOTSUP, "disk size %llu too large (max %llu)",
                         (unsigned long long)h->disk_size,
                         (unsigned long long)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE);
    if (h->disk_size % VDI_SECTOR_SIZE)
        h->disk_size += VDI_SECTOR_SIZE - h->disk_size % VDI_SECTOR_SIZE;
    if (h->version != VDI_VERSION_1_1)
        return img_error(img, ENOTSUP, "unsupported VDI version %u.%u (only 1.1)",
                         h->version >> 16, h->version & 0xffff);
    if (h->offset_bmap % VDI_SECTOR_SIZE)
        return img_error(img, ENOTSUP, "block map offset 0x%x is not sector aligned",
                         h->offset_bmap);
    if (h->offset_data % VDI_SECTOR_SIZE)
        return img_error(img, ENOTSUP, "data offset 0x%x is not sector aligned",
                         h->offset_data);
    if (h->sector_size != VDI_SECTOR_SIZE)
        return img_error(img, ENOTSUP, "sector size %u is not 512", h->sector_size);
    if (h->block_size != VDI_BLOCK_SIZE)
        return img_error(img, ENOTSUP, "block size %u is not 1 MiB (the only size supported)",
                         h->block_size);
    if (h->disk_size > (uint64_t)h->blocks_in_image * h->block_size)
        return img_error(img, EINVAL, "disk size %llu but the block map covers only %llu bytes",
                         (unsigned long long)h->disk_size,
                         (unsigned long long)h->blocks_in_image * h->block_size);
    if (h->link_uuid_set || h->parent_uuid_set)
        return img_error(img, ENOTSUP, "differencing (snapshot) VDI: non-null %s UUID; "
                         "not supported (qemu refuses it too)",
                         h->link_uuid_set ? "link" : "parent");
    if (h->blocks_in_image > VDI_BLOCKS_MAX)
        return img_error(img, ENOTSUP, "too many blocks %u (max %u)", h->blocks_in_image,
                         VDI_BLOCKS_MAX);
    if (h->image_type != VDI_TYPE_DYNAMIC && h->image_type != VDI_TYPE_STATIC)
        return img_error(img, ENOTSUP, "image type %u not supported (1 dynamic, 2 static)",
                         h->image_type);
    return 0;
}

/* Every allocated block must lie in the file (the part of it that the disk
 * size covers: the last block may be cut by the disk size), and clear of
 * the header and the block map, which a write to it would overwrite. */
static int vdi_check_bmap(struct img *img, const struct vdi *s, uint64_t disk_size,
                          uint64_t file_size)
{
    for (uint32_t i = 0; i < s->blocks; i++) {
        uint32_t e = s->bmap[i];
        if (e == VDI_UNALLOCATED || e == VDI_DISCARDED)
            continue;
        uint64_t guest = (uint64_t)i * s->block_size;
        uint64_t used = guest >= disk_size ? 0 : disk_size - guest;
        if (used > s->block_size)
            used = s->block_size;
        uint64_t host = s->offset_data + (uint64_t)e * s->block_size;
        if (host > file_size || used > file_size - host)
            return img_error(img, EINVAL, "block map entry %u (block %u) points past the end "
                             "of the file", i, e);
        uint64_t bmap_end = s->offset_bmap + (uint64_t)s->blocks * 4;
        bool on_header = host < VDI_HEADER_SIZE;
        if (used && (on_header || (host < bmap_end && host + used > s->offset_bmap)))
            return img_error(img, EINVAL, "block map entry %u (block %u) lies on the %s", i, e,
                             on_header ? "header" : "block map");
    }
    return 0;
}

static int vdi_load_bmap(struct img *img, struct vdi *s, uint32_t offset_bmap,
                         uint64_t file_size)
{
    uint64_t bytes = (uint64_t)s->blocks * 4;
    if (offset_bmap > file_size || bytes > file_size - offset_bmap)
        return img_error(img, EINVAL, "block map (%u entries at 0x%x) lies past the end of "
                         "the file", s->blocks, offset_bmap);
    if (s->blocks == 0)
        return 0;
    uint8_t *raw = malloc(bytes);
    s->bmap = malloc(bytes);
    if (!raw || !s->bmap) {
        free(raw);
        return img_error(img, ENOMEM, "cannot allocate the block map (%u entries)", s->blocks);
    }
    int r = img_pread(img, img->fd, raw, bytes, offset_bmap, "block map");
    for (uint32_t i = 0; r == 0 && i < s->blocks; i++)
        s->bmap[i] = get_le32(raw + 4 * (size_t)i);
    free(raw);
    return r;
}

static bool vdi_is_allocated(uint32_t e)
{
    return e < VDI_DISCARDED;
}

/* Where the next block goes.  qemu puts it at slot blocks_allocated; we
 * also step past every slot an entry uses, so that a header count that
 * lags behind the map (a foreign writer's crash) never makes two blocks
 * share a slot. */
static uint32_t vdi_first_free_slot(const struct vdi *s)
{
    uint32_t next = s->blocks_allocated;
    for (uint32_t i = 0; i < s->blocks; i++)
        if (vdi_is_allocated(s->bmap[i]) && s->bmap[i] >= next)
            next = s->bmap[i] + 1;
    return next;
}

static int vdi_open(struct img *img, const struct img_open_opts *o)
{
    (void)o;
    uint8_t buf[VDI_HEADER_SIZE];
    struct vdi_header h;
    int64_t fsize = img_fd_size(img->fd);
    if (fsize < 0)
        return img_error(img, (int)-fsize, "cannot get the size: %s", strerror((int)-fsize));
    if (fsize < VDI_HEADER_SIZE)
        return img_error(img, EINVAL, "file too small for a VDI header (%lld bytes)",
                         (long long)fsize);
    int r = img_pread(img, img->fd, buf, sizeof(buf), 0, "VDI header");
    if (r < 0)
        return r;
    vdi_decode_header(buf, &h);
    r = vdi_check_header(img, &h);
    if (r < 0)
        return r;
    if (h.offset_data > (uint64_t)fsize)
        return img_error(img, EINVAL, "data offset 0x%x lies past the end of the file",
                         h.offset_data);

    struct vdi *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    img->priv = s;   /* freed by vdi_close, also when open fails */
    s->blocks = h.blocks_in_image;
    s->block_size = h.block_size;
    s->offset_data = h.offset_data;
    s->offset_bmap = h.offset_bmap;
    s->blocks_allocated = h.blocks_allocated;
    r = vdi_load_bmap(img, s, h.offset_bmap, (uint64_t)fsize);
    if (r == 0)
        r = vdi_check_bmap(img, s, h.disk_size, (uint64_t)fsize);
    if (r < 0)
        return r;
    s->next_slot = vdi_first_free_slot(s);
    img->size = h.disk_size;
    img->cluster_size = s->block_size;
    return 0;
}

static void vdi_close(struct img *img)
{
    struct vdi *s = img->priv;
    pthread_mutex_destroy(&s->lock);
    free(s->bmap);
    free(s->block_buf);
    free(s);
    img->priv = NULL;
}

static enum img_kind vdi_entry_kind(uint32_t e)
{
    if (e == VDI_UNALLOCATED)
        return IMG_UNALLOCATED;
    if (e == VDI_DISCARDED)
        return IMG_ZERO;
    return IMG_DATA;
}

/* The first extent of [off, off+len): runs of blocks of one kind, and for
 * data only while the next block sits right after the previous one in the
 * file, so that one extent is one plain host range. */
static int vdi_map_locked(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    const struct vdi *s = img->priv;
    uint64_t block = off / s->block_size;
    uint64_t in_block = off % s->block_size;
    uint32_t first = s->bmap[block];
    enum img_kind kind = vdi_entry_kind(first);
    uint64_t n = s->block_size - in_block;
    uint32_t prev = first;
    while (n < len && block + 1 < s->blocks) {
        uint32_t next = s->bmap[block + 1];
        if (vdi_entry_kind(next) != kind || (kind == IMG_DATA && next != prev + 1))
            break;
        prev = next;
        block++;
        n += s->block_size;
    }
    ext->off = off;
    ext->len = n < len ? n : len;
    ext->kind = kind;
    if (kind == IMG_DATA) {
        ext->fd = img->fd;
        ext->host_off = s->offset_data + (uint64_t)first * s->block_size + in_block;
    }
    return 0;
}

/* The block map changes only under a writer, so read-only images skip the
 * lock. */
static int vdi_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    struct vdi *s = img->priv;
    if (!img->read_write)
        return vdi_map_locked(img, off, len, ext);
    pthread_mutex_lock(&s->lock);
    int r = vdi_map_locked(img, off, len, ext);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ==== write side ====
 *
 * Allocation of a block, in this order (qemu 7.2 writes the same three
 * things in the same order):
 *   1. the whole block at the next free data slot: the caller's bytes,
 *      zeros around them (VDI has no backing file to fill them from);
 *   2. the header's blocks_allocated, counting the new slot;
 *   3. the block map entry naming the slot.
 * A process killed after step 1 leaves bytes past every used slot, which
 * nothing names: the next allocation overwrites them.  Killed after step 2,
 * the header counts one slot more than the map names: a leaked slot that
 * no later allocation reuses (qemu and we both allocate at or past the
 * count), and that qemu-img check reports as "allocated blocks mismatch".
 * The reverse order of 2 and 3 would instead let qemu's next allocation
 * hand the named slot out a second time.  No map entry ever names a slot
 * before its bytes are written.  Each step is one small pwrite; nothing is
 * synced between steps (as in qemu): after a power loss, only what the
 * last flush covered is promised. */

/* Test seam: when set, called after each numbered allocation step, so that
 * the crash tests can stop the process between two steps. */
void (*imgfs_vdi_alloc_step_hook)(int step);

static void vdi_step_done(int step)
{
    if (imgfs_vdi_alloc_step_hook)
        imgfs_vdi_alloc_step_hook(step);
}

static int vdi_write_error(struct img *img, int r, const char *what, uint64_t off)
{
    return img_error(img, -r, "writing the %s at 0x%llx: %s", what, (unsigned long long)off,
                     strerror(-r));
}

static int vdi_put_u32(struct img *img, uint32_t v, uint64_t off, const char *what)
{
    uint8_t b[4];
    put_le32(b, v);
    int r = img_write_full(img->fd, b, sizeof(b), off);
    return r < 0 ? vdi_write_error(img, r, what, off) : 0;
}

/* Steps 1-3 above for guest block `block`, holding s->lock. */
static int vdi_allocate(struct img *img, struct vdi *s, uint32_t block, uint32_t in,
                        const void *buf, uint32_t len)
{
    if (s->next_slot >= s->blocks)
        return img_error(img, ENOSPC, "no free data slot for block %u: the header counts "
                         "%u allocated blocks of %u (run check)", block, s->blocks_allocated,
                         s->blocks);
    if (!s->block_buf && !(s->block_buf = malloc(s->block_size)))
        return img_error(img, ENOMEM, "cannot allocate a block buffer");
    uint32_t slot = s->next_slot;
    memset(s->block_buf, 0, s->block_size);
    memcpy(s->block_buf + in, buf, len);
    uint64_t host = s->offset_data + (uint64_t)slot * s->block_size;
    int r = img_write_full(img->fd, s->block_buf, s->block_size, host);
    if (r < 0)
        return vdi_write_error(img, r, "new data block", host);
    vdi_step_done(1);
    r = vdi_put_u32(img, slot + 1, VDI_OFF_BLOCKS_ALLOCATED, "header's block count");
    if (r < 0)
        return r;
    s->blocks_allocated = slot + 1;
    s->next_slot = slot + 1;   /* from here on the slot is spent, even on failure */
    vdi_step_done(2);
    r = vdi_put_u32(img, slot, s->offset_bmap + 4ull * block, "block map entry");
    if (r < 0)
        return r;
    s->bmap[block] = slot;
    vdi_step_done(3);
    return 0;
}

/* Write within one block.  An allocated block's slot never changes, so its
 * bytes are written without the lock. */
static int vdi_write_in_block(struct img *img, struct vdi *s, uint32_t block, uint32_t in,
                              const void *buf, uint32_t len)
{
    pthread_mutex_lock(&s->lock);
    uint32_t e = s->bmap[block];
    if (!vdi_is_allocated(e)) {
        int r = vdi_allocate(img, s, block, in, buf, len);
        pthread_mutex_unlock(&s->lock);
        return r;
    }
    pthread_mutex_unlock(&s->lock);
    uint64_t host = s->offset_data + (uint64_t)e * s->block_size + in;
    int r = img_write_full(img->fd, buf, len, host);
    return r < 0 ? vdi_write_error(img, r, "data", host) : 0;
}

static int vdi_check_range(struct img *img, uint64_t off, uint64_t len)
{
    if (!img->read_write)
        return img_error(img, EROFS, "image not opened for writing");
    if (off > img->size || len > img->size - off)
        return img_error(img, EINVAL, "write of %llu bytes at %llu passes the end of the disk "
                         "(%llu bytes)", (unsigned long long)len, (unsigned long long)off,
                         (unsigned long long)img->size);
    return 0;
}

static int vdi_write(struct img *img, const void *buf, size_t len, uint64_t off)
{
    struct vdi *s = img->priv;
    int r = vdi_check_range(img, off, len);
    const uint8_t *p = buf;
    while (r == 0 && len > 0) {
        uint32_t block = (uint32_t)(off / s->block_size);
        uint32_t in = (uint32_t)(off % s->block_size);
        uint32_t n = s->block_size - in;
        if (n > len)
            n = (uint32_t)len;
        r = vdi_write_in_block(img, s, block, in, p, n);
        p += n;
        off += n;
        len -= n;
    }
    return r;
}

/* Zeros in the host file: a hole when allowed, an allocated zero range
 * otherwise, plain zero writes where the file system has neither. */
static int zero_host_range(int fd, uint64_t off, uint64_t len, bool may_unmap)
{
    int mode = may_unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE;
    if (fallocate(fd, mode, (off_t)off, (off_t)len) == 0)
        return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
        return -errno;
    static const uint8_t zeros[65536];
    while (len > 0) {
        size_t n = len < sizeof(zeros) ? (size_t)len : sizeof(zeros);
        int r = img_write_full(fd, zeros, n, off);
        if (r < 0)
            return r;
        off += n;
        len -= n;
    }
    return 0;
}

/* Unallocated and discarded blocks already read as zeros and stay as they
 * are.  Allocated blocks keep their slot and get zeros: turning them into
 * "discarded" entries would free a slot that qemu's allocator (always at
 * the header's count) cannot reuse, and qemu-img check would count the
 * entry missing from blocks_allocated as a corruption. */
static int vdi_write_zeroes(struct img *img, uint64_t off, uint64_t len, bool may_unmap)
{
    struct vdi *s = img->priv;
    int r = vdi_check_range(img, off, len);
    while (r == 0 && len > 0) {
        uint32_t block = (uint32_t)(off / s->block_size);
        uint32_t in = (uint32_t)(off % s->block_size);
        uint64_t n = s->block_size - in < len ? s->block_size - in : len;
        pthread_mutex_lock(&s->lock);
        uint32_t e = s->bmap[block];
        pthread_mutex_unlock(&s->lock);
        if (vdi_is_allocated(e)) {
            uint64_t host = s->offset_data + (uint64_t)e * s->block_size + in;
            r = zero_host_range(img->fd, host, n, may_unmap);
            if (r < 0)
                r = vdi_write_error(img, r, "zeros", host);
        }
        off += n;
        len -= n;
    }
    return r;
}

static int vdi_flush(struct img *img)
{
    return img_sync(img, img->fd, "the image");
}

/* ---- check: qemu-img check's findings, with one difference ----
 * A header count above the slots the map names is a leak here (a writer
 * killed between steps 2 and 3 leaves it; the data are safe); qemu calls
 * every count mismatch a corruption.  A count below them is a corruption:
 * the next allocation would reuse a named slot. */

static void vdi_report(struct img_check *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void vdi_report(struct img_check *res, const char *fmt, ...)
{
    if (!res->report)
        return;
    char line[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    res->report(res->report_ctx, line);
}

static int vdi_check(struct img *img, struct img_check *res, unsigned repair)
{
    struct vdi *s = img->priv;
    if (repair)
        return img_error(img, ENOTSUP, "VDI images cannot be repaired");
    uint32_t *owner = malloc((size_t)s->blocks * sizeof(*owner) + 1);
    if (!owner)
        return img_error(img, ENOMEM, "cannot allocate the check table");
    memset(owner, 0xff, (size_t)s->blocks * sizeof(*owner));
    pthread_mutex_lock(&s->lock);
    uint32_t used = 0;
    for (uint32_t i = 0; i < s->blocks; i++) {
        uint32_t e = s->bmap[i];
        if (!vdi_is_allocated(e))
            continue;
        if (e >= s->blocks) {
            vdi_report(res, "ERROR: block index %u too large, is %u", i, e);
            res->corruptions++;
        } else if (owner[e] != VDI_UNALLOCATED) {
            vdi_report(res, "ERROR: block index %u also used by %u", owner[e], i);
            res->corruptions++;
        } else {
            owner[e] = i;
            used++;
        }
    }
    if (used > s->blocks_allocated) {
        vdi_report(res, "ERROR: allocated blocks mismatch, is %u, should be %u", used,
                   s->blocks_allocated);
        res->corruptions++;
    } else if (used < s->blocks_allocated) {
        vdi_report(res, "Leaked data slots: the header counts %u allocated blocks, the map "
                   "names %u", s->blocks_allocated, used);
        res->leaks += s->blocks_allocated - used;
    }
    res->total_clusters = s->blocks;
    res->allocated_clusters = used;
    pthread_mutex_unlock(&s->lock);
    free(owner);
    return 0;
}

/* ---- create, as qemu-img create -f vdi [-o static=on] ---- */

#define VDI_CREATE_TEXT "<<< imgfs VirtualBox Disk Image >>>\n"
#define VDI_BMAP_CHUNK  16384u   /* entries written per pwrite */

static int create_fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int create_fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -r;
}

/* qemu's bool options take on/off and their synonyms. */
static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = { "on", "yes", "true", "y" };
    static const char *const no[] = { "off", "no", "false", "n" };
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(v, yes[i]) == 0 || strcmp(v, no[i]) == 0) {
            *out = strcmp(v, yes[i]) == 0;
            return 0;
        }
    }
    return -EINVAL;
}

static int vdi_parse_create_opts(const struct img_create_opts *o, bool *is_static,
                                 char *err, size_t errlen)
{
    *is_static = false;
    if (o->backing_file)
        return create_fail(err, errlen, ENOTSUP,
                           "Backing file not supported for file format 'vdi'");
    for (size_t i = 0; i < o->n_opts; i++) {
        const char *k = o->opts[i].key, *v = o->opts[i].value;
        if (strcmp(k, "size") == 0)
            continue;   /* the caller folded it into o->size */
        /* qemu applies the host file options to the empty file before
         * the format writes it, so they change nothing in the image. */
        int r = img_file_create_option(k, v);
        if (r < 0)
            return create_fail(err, errlen, EINVAL, "Invalid preallocation mode: '%s'", v);
        if (r > 0)
            continue;
        if (strcmp(k, "static") != 0)
            return create_fail(err, errlen, EINVAL, "Invalid parameter '%s'", k);
        if (parse_bool(v, is_static) < 0)
            return create_fail(err, errlen, EINVAL, "Parameter 'static' expects 'on' or 'off'");
    }
    return 0;
}

/* A random (version 4) UUID in VirtualBox's byte order: the first three
 * fields little-endian, so the version nibble lives in byte 7. */
static void vdi_random_uuid(uint8_t uuid[16])
{
    if (getrandom(uuid, 16, 0) != 16) {
        for (int i = 0; i < 16; i++)   /* no entropy source: still unique enough */
            uuid[i] = (uint8_t)(rand() ^ (getpid() >> (i % 4)));
    }
    uuid[7] = (uint8_t)((uuid[7] & 0x0f) | 0x40);
    uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
}

/* The header as qemu 7.2 writes it: its text differs, the CHS fields stay
 * zero, the block map follows the header and the data the map. */
static void vdi_build_header(uint8_t *h, bool is_static, uint64_t size, uint32_t blocks,
                             uint32_t offset_data)
{
    memset(h, 0, VDI_HEADER_SIZE);
    memcpy(h, VDI_CREATE_TEXT, sizeof(VDI_CREATE_TEXT) - 1);
    put_le32(h + VDI_SIGNATURE_OFF, VDI_SIGNATURE);
    put_le32(h + 0x44, VDI_VERSION_1_1);
    put_le32(h + 0x48, VDI_CREATE_HEADER_SIZE);
    put_le32(h + 0x4c, is_static ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC);
    put_le32(h + 0x154, VDI_CREATE_BMAP_OFFSET);
    put_le32(h + 0x158, offset_data);
    put_le32(h + 0x168, VDI_SECTOR_SIZE);
    put_le64(h + 0x170, size);
    put_le32(h + 0x178, VDI_BLOCK_SIZE);
    put_le32(h + 0x180, blocks);
    put_le32(h + VDI_OFF_BLOCKS_ALLOCATED, is_static ? blocks : 0);
    vdi_random_uuid(h + 0x188);   /* image */
    vdi_random_uuid(h + 0x198);   /* last snapshot: qemu sets it too */
}

/* Static: block i in slot i; dynamic: every entry unallocated.  The map's
 * last sector is padded with zeros, as qemu pads it. */
static int vdi_write_bmap(int fd, bool is_static, uint32_t blocks, uint32_t bmap_bytes)
{
    uint8_t *chunk = calloc(VDI_BMAP_CHUNK, 4);
    if (!chunk)
        return -ENOMEM;
    int r = 0;
    for (uint32_t first = 0; r == 0 && first * 4ull < bmap_bytes; first += VDI_BMAP_CHUNK) {
        uint32_t n = (bmap_bytes - first * 4ull) / 4 < VDI_BMAP_CHUNK ?
                     (uint32_t)((bmap_bytes - first * 4ull) / 4) : VDI_BMAP_CHUNK;
        memset(chunk, 0, (size_t)n * 4);
        for (uint32_t i = 0; i < n && first + i < blocks; i++)
            put_le32(chunk + 4 * i, is_static ? first + i : VDI_UNALLOCATED);
        r = img_write_full(fd, chunk, (size_t)n * 4, VDI_CREATE_BMAP_OFFSET + first * 4ull);
    }
    free(chunk);
    return r;
}

static int vdi_write_new_image(int fd, bool is_static, uint64_t size)
{
    uint32_t blocks = (uint32_t)((size + VDI_BLOCK_SIZE - 1) / VDI_BLOCK_SIZE);
    uint32_t bmap_bytes = (uint32_t)(((uint64_t)blocks * 4 + VDI_SECTOR_SIZE - 1) /
                                     VDI_SECTOR_SIZE * VDI_SECTOR_SIZE);
    uint32_t offset_data = VDI_CREATE_BMAP_OFFSET + bmap_bytes;
    uint8_t h[VDI_HEADER_SIZE];
    vdi_build_header(h, is_static, size, blocks, offset_data);
    int r = img_write_full(fd, h, sizeof(h), 0);
    if (r == 0)
        r = vdi_write_bmap(fd, is_static, blocks, bmap_bytes);
    /* Static: the file reaches its full size now (sparse, as qemu's). */
    uint64_t end = offset_data + (is_static ? (uint64_t)blocks * VDI_BLOCK_SIZE : 0);
    if (r == 0 && ftruncate(fd, (off_t)end) < 0)
        r = -errno;
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    return r;
}

static int vdi_create(const char *path, const struct img_create_opts *o, char *err,
                      size_t errlen)
{
    bool is_static;
    int r = vdi_parse_create_opts(o, &is_static, err, errlen);
    if (r < 0)
        return r;
    uint64_t max = (uint64_t)VDI_BLOCKS_MAX * VDI_BLOCK_SIZE;   /* a multiple of 512 */
    if (o->size > max)
        return create_fail(err, errlen, ENOTSUP, "Unsupported VDI image size (size is 0x%llx, "
                           "max supported is 0x%llx)", (unsigned long long)o->size,
                           (unsigned long long)max);
    /* qemu-img rounds every size up to whole sectors */
    uint64_t size = (o->size + VDI_SECTOR_SIZE - 1) / VDI_SECTOR_SIZE * VDI_SECTOR_SIZE;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return create_fail(err, errlen, errno, "Could not create '%s': %s", path,
                           strerror(errno));
    r = vdi_write_new_image(fd, is_static, size);
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r < 0)
        return create_fail(err, errlen, -r, "Could not write '%s': %s", path, strerror(-r));
    return 0;
}

/* As qemu-img lists them for vdi; static shows "off" when not given. */
static const struct img_create_option vdi_create_options[] = {
    { "size", "size", "Virtual disk size", NULL },
    { "static", "bool (on/off)", "Static VDI image: every block allocated at creation", "off" },
    { NULL, NULL, NULL, NULL },
};

const struct img_format img_format_vdi = {
    .name = "vdi",
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .map = vdi_map,
    .create = vdi_create,
    .create_options = vdi_create_options,
    .write = vdi_write,
    .write_zeroes = vdi_write_zeroes,
    .flush = vdi_flush,
    .check = vdi_check,
};
