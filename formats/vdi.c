/* vdi: VirtualBox Disk Image, read side.
 *
 * A 512-byte little-endian header, a block map (one u32 per guest block,
 * naming the block's slot in the data area) and the data area.  The whole
 * block map is loaded at open and never changes afterwards, so map() needs
 * no lock.
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
#include <stdlib.h>
#include <string.h>

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
    uint32_t block_size, blocks_in_image;
    bool link_uuid_set, parent_uuid_set;
};

struct vdi {
    uint32_t *bmap;          /* host-endian copy of the block map */
    uint32_t blocks;
    uint32_t block_size;
    uint64_t offset_data;
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

/* Every allocated block must lie in the file: the part of it that the
 * disk size covers (the last block may be cut by the disk size). */
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
    img->priv = s;   /* freed by vdi_close, also when open fails */
    s->blocks = h.blocks_in_image;
    s->block_size = h.block_size;
    s->offset_data = h.offset_data;
    r = vdi_load_bmap(img, s, h.offset_bmap, (uint64_t)fsize);
    if (r == 0)
        r = vdi_check_bmap(img, s, h.disk_size, (uint64_t)fsize);
    if (r < 0)
        return r;
    img->size = h.disk_size;
    img->cluster_size = s->block_size;
    return 0;
}

static void vdi_close(struct img *img)
{
    struct vdi *s = img->priv;
    free(s->bmap);
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
static int vdi_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
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

const struct img_format img_format_vdi = {
    .name = "vdi",
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .map = vdi_map,
};
