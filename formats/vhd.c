/* vpc: Microsoft Virtual Hard Disk (VHD), read and write side; named "vpc"
 * as qemu-img names it.
 *
 * Big-endian throughout.  A 512-byte footer "conectix" closes the file; a
 * dynamic or differencing disk also keeps a copy at offset 0, followed by a
 * "cxsparse" dynamic header and the block allocation table (BAT, one u32
 * sector number per block).  Each allocated block is a sector bitmap
 * (block_size/512 bits rounded up to whole sectors) followed by the data.
 * The BAT (and, for differencing disks, the sector bitmaps) is loaded at
 * open.  The BAT changes only when an image opened for writing allocates a
 * block; then map() and the writers share s->lock.
 *
 * Behaviour follows qemu 7.2 (block/vpc.c), our oracle:
 *  - the footer at offset 0 decides dynamic/differencing; without it, the
 *    footer at the end of the file must describe a fixed disk (also the
 *    511-byte footer of old Virtual PC versions, which qemu does not read);
 *  - a wrong footer checksum is refused ("Incorrect header checksum");
 *  - virtual size: CHS product, except current_size for creators that size
 *    by it (Hyper-V "win ", "qem2", disk2vhd "d2v ", XenConverter "CTXS",
 *    XenServer "tap\0") and for the maximal CHS geometry;
 *  - an allocated block of a dynamic disk is DATA for its whole length:
 *    qemu reads the block without looking at its bitmap, and so do we.
 * Differencing disks (type 4): the sector bitmap decides, sector by sector,
 * whether this layer or the parent answers.  The parent is looked up by the
 * relative locator (W2ru), then by the file name of the absolute locator
 * (W2ku) and of the recorded parent name, in the image's folder, and its
 * UUID must match.  When no parent is found the disk opens alone, as qemu
 * 7.2 opens it (qemu ignores the parent entirely): what the parent would
 * answer reads as zeros. */
#include "core/format.h"
#include "core/bytes.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define VHD_FOOTER_SIZE      512
#define VHD_OLD_FOOTER_SIZE  511       /* Virtual PC before 2004 */
#define VHD_DYNHDR_SIZE      1024
#define VHD_DYNHDR_MIN       40        /* up to block_size: what we must have */
#define VHD_SECTOR           512u
#define VHD_TYPE_FIXED       2
#define VHD_TYPE_DYNAMIC     3
#define VHD_TYPE_DIFF        4
#define VHD_BAT_UNUSED       0xffffffffu
#define VHD_MAX_SECTORS      0xff000000ull            /* qemu: 2040 GiB */
#define VHD_MAX_GEOMETRY     (65535ull * 16 * 255)
/* qemu: the BAT is read in one go whose size must fit in an int. */
#define VHD_MAX_BAT_ENTRIES  (INT_MAX / 4)
#define VHD_MAX_LOCATOR      4096      /* bytes of a parent path we accept */

#define PLAT_W2RU 0x57327275u   /* "W2ru": relative Windows path, UTF-16LE */
#define PLAT_W2KU 0x57326b75u   /* "W2ku": absolute Windows path, UTF-16LE */

struct vhd_footer {
    uint64_t data_offset, current_size;
    uint32_t disk_type, checksum;
    uint16_t cyls;
    uint8_t heads, secs;
    char creator_app[4];
    uint8_t uuid[16];
};

struct vhd {
    uint32_t type;
    uint32_t block_size;
    uint32_t bitmap_bytes;     /* on disk, before each block's data */
    uint32_t n_bat;
    uint32_t *bat;
    /* Differencing disks only: the sector bitmap of each allocated block,
     * `stride` bytes each, at slot[i] * stride; slot is -1u when the block
     * is unallocated. */
    uint8_t *bitmaps;
    uint32_t *slot;
    size_t stride;
    uint64_t dynhdr_offset;
    /* Write side (dynamic disks): */
    uint64_t bat_offset;
    uint64_t next_block;       /* where the next block goes: past the BAT and
                                  every allocated block (qemu's rule) */
    uint8_t footer[VHD_FOOTER_SIZE];   /* rewritten at each new end */
    uint8_t *block_buf;        /* bitmap + one block, for allocations */
    pthread_mutex_t lock;      /* bat, next_block, block_buf when writable */
};

static int vhd_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)filename;
    return len >= 8 && memcmp(head, "conectix", 8) == 0 ? 100 : 0;
}

/* One's complement of the byte sum, the checksum field counted as zero. */
static uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t field)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < field || i >= field + 4)
            sum += buf[i];
    return ~sum;
}

static void vhd_decode_footer(const uint8_t *b, struct vhd_footer *f)
{
    f->data_offset = get_be64(b + 16);
    memcpy(f->creator_app, b + 28, 4);
    f->current_size = get_be64(b + 48);
    f->cyls = get_be16(b + 56);
    f->heads = b[58];
    f->secs = b[59];
    f->disk_type = get_be32(b + 60);
    f->checksum = get_be32(b + 64);
    memcpy(f->uuid, b + 68, 16);
}

/* qemu 7.2's rule (vpc_open): Virtual PC sizes a disk by its geometry, the
 * tools listed here by current_size. */
static uint64_t vhd_virtual_sectors(const struct vhd_footer *f)
{
    static const char by_size[][4] = { "win ", "qem2", "d2v ", "CTXS", { 't', 'a', 'p', 0 } };
    uint64_t chs = (uint64_t)f->cyls * f->heads * f->secs;
    bool use_chs = true;
    for (size_t i = 0; i < sizeof(by_size) / sizeof(by_size[0]); i++)
        if (memcmp(f->creator_app, by_size[i], 4) == 0)
            use_chs = false;
    if (!use_chs || chs == VHD_MAX_GEOMETRY)
        return f->current_size / VHD_SECTOR;
    return chs;
}

/* Find and read the footer: at offset 0 for dynamic and differencing disks,
 * else at the end of the file (fixed).  Sets *footer_len for fixed disks. */
static int vhd_read_footer(struct img *img, uint64_t fsize, uint8_t *buf, size_t *footer_len)
{
    if (fsize < VHD_OLD_FOOTER_SIZE)
        return img_error(img, EINVAL, "file too small for a VHD footer (%llu bytes)",
                         (unsigned long long)fsize);
    *footer_len = 0;
    memset(buf, 0, VHD_FOOTER_SIZE);
    int r = img_pread(img, img->fd, buf, VHD_FOOTER_SIZE < fsize ? VHD_FOOTER_SIZE : fsize, 0,
                      "VHD footer");
    if (r < 0 || memcmp(buf, "conectix", 8) == 0)
        return r;
    size_t lens[] = { VHD_FOOTER_SIZE, VHD_OLD_FOOTER_SIZE };
    for (size_t i = 0; i < 2; i++) {
        if (fsize < lens[i])
            continue;
        memset(buf, 0, VHD_FOOTER_SIZE);
        r = img_pread(img, img->fd, buf, lens[i], fsize - lens[i], "VHD footer");
        if (r < 0)
            return r;
        if (memcmp(buf, "conectix", 8) == 0) {
            *footer_len = lens[i];
            return 0;
        }
    }
    return img_error(img, EINVAL, "not a VHD image (no \"conectix\" footer at the start or "
                     "the end)");
}

static int vhd_check_footer(struct img *img, const uint8_t *buf, const struct vhd_footer *f,
                            size_t footer_len)
{
    if (vhd_checksum(buf, VHD_FOOTER_SIZE, 64) != f->checksum)
        return img_error(img, EINVAL, "Incorrect header checksum: footer says 0x%08x, bytes "
                         "sum to 0x%08x", f->checksum, vhd_checksum(buf, VHD_FOOTER_SIZE, 64));
    if (footer_len && f->disk_type != VHD_TYPE_FIXED)
        return img_error(img, EINVAL, "footer at the end of the file has disk type %u but "
                         "there is no footer copy at offset 0 (only fixed disks lack it)",
                         f->disk_type);
    if (!footer_len && f->disk_type != VHD_TYPE_DYNAMIC && f->disk_type != VHD_TYPE_DIFF)
        return img_error(img, ENOTSUP, "disk type %u not supported (2 fixed, 3 dynamic, "
                         "4 differencing)", f->disk_type);
    return 0;
}

/* ---- dynamic header, BAT, bitmaps ---- */

static int vhd_check_geometry(struct img *img, struct vhd *s, uint32_t max_entries)
{
    uint32_t bs = s->block_size;
    if (bs < VHD_SECTOR || (bs & (bs - 1)))
        return img_error(img, EINVAL, "Invalid block size %u (must be a power of two >= 512)",
                         bs);
    if (img->size / bs > 0xffffffffull)
        return img_error(img, EINVAL, "too many blocks: %llu", (unsigned long long)(img->size / bs));
    if ((uint64_t)max_entries * bs < img->size)
        return img_error(img, EINVAL, "BAT of %u entries of %u bytes does not cover the virtual "
                         "size %llu", max_entries, bs, (unsigned long long)img->size);
    if (max_entries > VHD_MAX_BAT_ENTRIES)
        return img_error(img, EINVAL, "max table entries %u too large (max %u)", max_entries,
                         VHD_MAX_BAT_ENTRIES);
    /* Spec: one bit per sector, rounded up to whole sectors.  (qemu rounds
     * block_size/4096 instead, which differs only below 4 KiB blocks.) */
    uint64_t bits = bs / VHD_SECTOR;
    s->bitmap_bytes = (uint32_t)(((bits + 7) / 8 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR);
    return 0;
}

static int vhd_load_bat(struct img *img, struct vhd *s, uint64_t table_offset, uint64_t fsize)
{
    uint64_t bytes = (uint64_t)s->n_bat * 4;
    if (table_offset > fsize || bytes > fsize - table_offset)
        return img_error(img, EINVAL, "BAT (%u entries at 0x%llx) lies past the end of the file",
                         s->n_bat, (unsigned long long)table_offset);
    if (s->n_bat == 0)
        return 0;
    uint8_t *raw = malloc(bytes);
    s->bat = malloc(bytes);
    if (!raw || !s->bat) {
        free(raw);
        return img_error(img, ENOMEM, "cannot allocate the BAT (%u entries)", s->n_bat);
    }
    int r = img_pread(img, img->fd, raw, bytes, table_offset, "BAT");
    for (uint32_t i = 0; r == 0 && i < s->n_bat; i++)
        s->bat[i] = get_be32(raw + 4 * (size_t)i);
    free(raw);
    for (uint32_t i = 0; r == 0 && i < s->n_bat; i++) {
        if (s->bat[i] == VHD_BAT_UNUSED)
            continue;
        uint64_t end = (uint64_t)s->bat[i] * VHD_SECTOR + s->bitmap_bytes + s->block_size;
        if (end > fsize)
            r = img_error(img, EINVAL, "BAT entry %u (sector %u) points past the end of the "
                          "file", i, s->bat[i]);
    }
    return r;
}

/* Differencing disks: keep each allocated block's sector bitmap.  Their
 * total is bounded by the file size (each is a part of it), unless BAT
 * entries repeat, which we refuse past that bound. */
static int vhd_load_bitmaps(struct img *img, struct vhd *s, uint64_t fsize)
{
    uint32_t n_alloc = 0;
    for (uint32_t i = 0; i < s->n_bat; i++)
        n_alloc += s->bat[i] != VHD_BAT_UNUSED;
    s->stride = (s->block_size / VHD_SECTOR + 7) / 8;
    if ((uint64_t)n_alloc * s->stride > fsize)
        return img_error(img, EINVAL, "sector bitmaps (%u blocks) larger than the file: "
                         "BAT entries repeat", n_alloc);
    s->slot = malloc((size_t)s->n_bat * sizeof(*s->slot) + 1);
    s->bitmaps = malloc((size_t)n_alloc * s->stride + 1);
    if (!s->slot || !s->bitmaps)
        return img_error(img, ENOMEM, "cannot allocate the sector bitmaps");
    uint32_t k = 0;
    for (uint32_t i = 0; i < s->n_bat; i++) {
        s->slot[i] = VHD_BAT_UNUSED;
        if (s->bat[i] == VHD_BAT_UNUSED)
            continue;
        int r = img_pread(img, img->fd, s->bitmaps + (size_t)k * s->stride, s->stride,
                          (uint64_t)s->bat[i] * VHD_SECTOR, "sector bitmap");
        if (r < 0)
            return r;
        s->slot[i] = k++;
    }
    return 0;
}

/* ---- differencing: the parent's name ---- */

/* UTF-16 (LE or BE) to UTF-8, up to the first NUL.  Returns a malloc'd
 * string, or NULL when the text is not valid UTF-16. */
static char *utf16_to_utf8(const uint8_t *p, size_t nbytes, bool big_endian)
{
    size_t units = nbytes / 2;
    char *out = malloc(units * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < units; i++) {
        uint32_t c = big_endian ? get_be16(p + 2 * i) : get_le16(p + 2 * i);
        if (c == 0)
            break;
        if (c >= 0xdc00 && c < 0xe000)
            goto bad;
        if (c >= 0xd800 && c < 0xdc00) {
            if (i + 1 >= units)
                goto bad;
            uint32_t lo = big_endian ? get_be16(p + 2 * i + 2) : get_le16(p + 2 * i + 2);
            if (lo < 0xdc00 || lo >= 0xe000)
                goto bad;
            c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
            i++;
        }
        if (c < 0x80) {
            *o++ = (char)c;
        } else if (c < 0x800) {
            *o++ = (char)(0xc0 | c >> 6);
            *o++ = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            *o++ = (char)(0xe0 | c >> 12);
            *o++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *o++ = (char)(0x80 | (c & 0x3f));
        } else {
            *o++ = (char)(0xf0 | c >> 18);
            *o++ = (char)(0x80 | ((c >> 12) & 0x3f));
            *o++ = (char)(0x80 | ((c >> 6) & 0x3f));
            *o++ = (char)(0x80 | (c & 0x3f));
        }
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* Windows path to a name we can look up: "\" becomes "/"; with
 * `base_only`, only the last component is kept (absolute paths name
 * another machine's folders). */
static void windows_path_to_local(char *s, bool base_only)
{
    for (char *p = s; *p; p++)
        if (*p == '\\')
            *p = '/';
    if (base_only) {
        char *slash = strrchr(s, '/');
        if (slash)
            memmove(s, slash + 1, strlen(slash + 1) + 1);
    }
}

static char *vhd_locator_path(struct img *img, const uint8_t *loc, uint64_t fsize,
                              bool base_only)
{
    uint32_t len = get_be32(loc + 8);
    uint64_t off = get_be64(loc + 16);
    if (len == 0)
        return NULL;   /* an empty slot */
    if (len > VHD_MAX_LOCATOR || off > fsize || len > fsize - off) {
        img_error(img, EINVAL, "parent locator of %u bytes at 0x%llx lies past the end of the "
                  "file", len, (unsigned long long)off);
        return NULL;
    }
    uint8_t *raw = malloc(len);
    if (!raw)
        return NULL;
    char *path = NULL;
    if (img_pread(img, img->fd, raw, len, off, "parent locator") == 0)
        path = utf16_to_utf8(raw, len, false);
    free(raw);
    if (path)
        windows_path_to_local(path, base_only);
    return path;
}

/* The UUID in the footer of a VHD (at offset 0, or at the end). */
static bool read_vhd_uuid(int fd, uint8_t uuid[16])
{
    uint8_t b[VHD_FOOTER_SIZE];
    if (pread(fd, b, sizeof(b), 0) == (ssize_t)sizeof(b) && memcmp(b, "conectix", 8) == 0) {
        memcpy(uuid, b + 68, 16);
        return true;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < VHD_FOOTER_SIZE || pread(fd, b, sizeof(b), end - VHD_FOOTER_SIZE) !=
        (ssize_t)sizeof(b) || memcmp(b, "conectix", 8) != 0)
        return false;
    memcpy(uuid, b + 68, 16);
    return true;
}

/* Is `name` a file in reach (the core's confinement rules)?  Then it is the
 * parent, provided its UUID is the one the child records.  0 = not found. */
static int vhd_try_parent(struct img *img, const char *name, const uint8_t want_uuid[16])
{
    if (!name || !*name)
        return 0;
    int fd = img_open_referenced(img, name, "parent", false, NULL);
    if (fd == -ENOENT) {
        img->errmsg[0] = '\0';
        return 0;
    }
    if (fd < 0)
        return fd;
    uint8_t uuid[16];
    bool ok = read_vhd_uuid(fd, uuid);
    close(fd);
    if (!ok || memcmp(uuid, want_uuid, 16) != 0)
        return img_error(img, EINVAL, "parent '%s' is not the VHD this differencing disk was "
                         "made from (its UUID differs)", name);
    img->backing_file = strdup(name);
    img->backing_fmt = strdup("vpc");
    return img->backing_file && img->backing_fmt ? 1 : -ENOMEM;
}

static int vhd_find_parent(struct img *img, const uint8_t *dh, uint64_t fsize)
{
    char *names[3] = { NULL, NULL, NULL };
    img->errmsg[0] = '\0';
    for (int i = 0; i < 8; i++) {
        const uint8_t *loc = dh + 576 + 24 * i;
        uint32_t code = get_be32(loc);
        if (code == PLAT_W2RU && !names[0])
            names[0] = vhd_locator_path(img, loc, fsize, false);
        else if (code == PLAT_W2KU && !names[1])
            names[1] = vhd_locator_path(img, loc, fsize, true);
    }
    /* A locator pointing out of the file is damage, not a missing parent. */
    if (img->errmsg[0]) {
        free(names[0]);
        free(names[1]);
        return -EINVAL;
    }
    names[2] = utf16_to_utf8(dh + 64, 512, true);
    if (names[2])
        windows_path_to_local(names[2], true);
    int r = 0;
    for (int i = 0; i < 3 && r == 0; i++)
        r = vhd_try_parent(img, names[i], dh + 40);
    for (int i = 0; i < 3; i++)
        free(names[i]);
    return r < 0 ? r : 0;
}

/* qemu's free_data_block_offset: the first sector past the BAT and past
 * every allocated block.  Anything beyond it is unreferenced (an
 * allocation that a crash cut short, the footer). */
static uint64_t vhd_first_free_offset(const struct vhd *s)
{
    uint64_t next = (s->bat_offset + (uint64_t)s->n_bat * 4 + VHD_SECTOR - 1) /
                    VHD_SECTOR * VHD_SECTOR;
    for (uint32_t i = 0; i < s->n_bat; i++) {
        if (s->bat[i] == VHD_BAT_UNUSED)
            continue;
        uint64_t end = (uint64_t)s->bat[i] * VHD_SECTOR + s->bitmap_bytes + s->block_size;
        if (end > next)
            next = end;
    }
    return next;
}

/* ---- open ---- */

static int vhd_open_dynamic(struct img *img, struct vhd *s, const struct vhd_footer *f,
                            uint64_t fsize)
{
    /* qemu reads past the end of the file as zeros; a header cut after its
     * fixed fields (fuzzed images are) is read the same way here. */
    uint8_t dh[VHD_DYNHDR_SIZE] = { 0 };
    if (f->data_offset > fsize || VHD_DYNHDR_MIN > fsize - f->data_offset)
        return img_error(img, EINVAL, "dynamic header offset 0x%llx lies past the end of the "
                         "file", (unsigned long long)f->data_offset);
    uint64_t avail = fsize - f->data_offset;
    int r = img_pread(img, img->fd, dh, avail < sizeof(dh) ? avail : sizeof(dh),
                      f->data_offset, "dynamic header");
    if (r < 0)
        return r;
    if (memcmp(dh, "cxsparse", 8) != 0)
        return img_error(img, EINVAL, "no \"cxsparse\" dynamic header at 0x%llx",
                         (unsigned long long)f->data_offset);
    s->dynhdr_offset = f->data_offset;
    s->block_size = get_be32(dh + 32);
    uint32_t max_entries = get_be32(dh + 28);
    r = vhd_check_geometry(img, s, max_entries);
    if (r < 0)
        return r;
    s->n_bat = max_entries;
    s->bat_offset = get_be64(dh + 16);
    r = vhd_load_bat(img, s, s->bat_offset, fsize);
    if (r < 0)
        return r;
    s->next_block = vhd_first_free_offset(s);
    img->cluster_size = s->block_size;
    if (s->type != VHD_TYPE_DIFF)
        return 0;
    r = vhd_load_bitmaps(img, s, fsize);
    if (r == 0)
        r = vhd_find_parent(img, dh, fsize);
    return r;
}

static int vhd_open(struct img *img, const struct img_open_opts *o)
{
    (void)o;
    uint8_t buf[VHD_FOOTER_SIZE];
    struct vhd_footer f;
    size_t footer_len;
    int64_t fsize = img_fd_size(img->fd);
    if (fsize < 0)
        return img_error(img, (int)-fsize, "cannot get the size: %s", strerror((int)-fsize));
    int r = vhd_read_footer(img, (uint64_t)fsize, buf, &footer_len);
    if (r < 0)
        return r;
    vhd_decode_footer(buf, &f);
    r = vhd_check_footer(img, buf, &f, footer_len);
    if (r < 0)
        return r;
    uint64_t sectors = vhd_virtual_sectors(&f);
    if (sectors > VHD_MAX_SECTORS)
        return img_error(img, EFBIG, "virtual size %llu bytes too large (max 2040 GiB)",
                         (unsigned long long)sectors * VHD_SECTOR);
    img->size = sectors * VHD_SECTOR;

    struct vhd *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    img->priv = s;   /* freed by vhd_close, also when open fails */
    s->type = f.disk_type;
    memcpy(s->footer, buf, sizeof(s->footer));
    if (s->type == VHD_TYPE_FIXED) {
        if (img->size > (uint64_t)fsize - footer_len)
            return img_error(img, EINVAL, "virtual size %llu is larger than the %llu bytes of "
                             "data before the footer", (unsigned long long)img->size,
                             (unsigned long long)((uint64_t)fsize - footer_len));
        return 0;
    }
    return vhd_open_dynamic(img, s, &f, (uint64_t)fsize);
}

static void vhd_close(struct img *img)
{
    struct vhd *s = img->priv;
    free(s->bat);
    free(s->bitmaps);
    free(s->slot);
    free(s->block_buf);
    pthread_mutex_destroy(&s->lock);
    free(s);
    img->priv = NULL;
}

/* ---- map ---- */

struct vhd_run {
    enum img_kind kind;
    uint64_t host;      /* DATA: host offset of the run's first byte */
    uint64_t len;       /* bytes, never past the end of the block */
};

static bool sector_present(const struct vhd *s, uint32_t block, uint64_t sector)
{
    const uint8_t *bm = s->bitmaps + (size_t)s->slot[block] * s->stride;
    return bm[sector / 8] & (0x80 >> (sector % 8));   /* most significant bit first */
}

/* The run of one kind that starts at guest offset `off`, within its block. */
static struct vhd_run vhd_run_at(const struct vhd *s, uint64_t off)
{
    uint64_t block = off / s->block_size, in = off % s->block_size;
    struct vhd_run run = { IMG_UNALLOCATED, 0, s->block_size - in };
    if (block >= s->n_bat || s->bat[block] == VHD_BAT_UNUSED)
        return run;
    uint64_t host = (uint64_t)s->bat[block] * VHD_SECTOR + s->bitmap_bytes + in;
    if (!s->bitmaps) {
        run.kind = IMG_DATA;
        run.host = host;
        return run;
    }
    uint64_t sector = in / VHD_SECTOR, last = s->block_size / VHD_SECTOR;
    bool present = sector_present(s, (uint32_t)block, sector);
    uint64_t end = sector + 1;
    while (end < last && sector_present(s, (uint32_t)block, end) == present)
        end++;
    run.kind = present ? IMG_DATA : IMG_UNALLOCATED;
    run.host = host;
    run.len = end * VHD_SECTOR - in;
    return run;
}

static int vhd_map_locked(struct img *img, uint64_t off, uint64_t len,
                          struct img_extent *ext)
{
    const struct vhd *s = img->priv;
    ext->off = off;
    if (s->type == VHD_TYPE_FIXED) {
        ext->kind = IMG_DATA;
        ext->len = len;
        ext->fd = img->fd;
        ext->host_off = off;
        return 0;
    }
    struct vhd_run first = vhd_run_at(s, off);
    uint64_t n = first.len;
    /* Join the following runs while they continue this one: same kind and,
     * for data, the next bytes in the file. */
    while (n < len) {
        struct vhd_run next = vhd_run_at(s, off + n);
        if (next.kind != first.kind || (first.kind == IMG_DATA && next.host != first.host + n))
            break;
        n += next.len;
    }
    ext->len = n < len ? n : len;
    ext->kind = first.kind;
    if (first.kind == IMG_DATA) {
        ext->fd = img->fd;
        ext->host_off = first.host;
    }
    return 0;
}

/* The BAT changes only under a writer, so read-only images skip the lock. */
static int vhd_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    struct vhd *s = img->priv;
    if (!img->read_write)
        return vhd_map_locked(img, off, len, ext);
    pthread_mutex_lock(&s->lock);
    int r = vhd_map_locked(img, off, len, ext);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ==== write side ====
 *
 * Fixed disks: the data area is the disk; writes go straight to it.
 * Dynamic disks allocate a block at next_block, in this order:
 *   1. the footer at the new end of the file (next_block + bitmap + block);
 *   2. the sector bitmap (all ones, as qemu writes it) and the whole block:
 *      the caller's bytes, zeros around them.  This overwrites the old
 *      footer, which step 1 has already replaced;
 *   3. the BAT entry.
 * After a kill at any step the file ends in a valid footer, and the BAT
 * names only blocks whose bytes are written: steps 1 and 2 alone leave
 * unreferenced bytes before the footer that the next allocation reuses
 * (next_block is computed from the BAT, not from the file size).  qemu
 * 7.2 orders it bitmap, footer, BAT entry, then data, so a kill can leave
 * it without a footer at the end or with a block of zeros in the BAT.
 * Nothing is synced between steps (as in qemu): after a power loss, only
 * what the last flush covered is promised.  Differencing disks are not
 * written: a partial block would need its parent's bytes and bitmap bits
 * per sector. */

/* Test seam: when set, called after each numbered allocation step, so that
 * the crash tests can stop the process between two steps. */
void (*imgfs_vhd_alloc_step_hook)(int step);

static void vhd_step_done(int step)
{
    if (imgfs_vhd_alloc_step_hook)
        imgfs_vhd_alloc_step_hook(step);
}

static int vhd_write_error(struct img *img, int r, const char *what, uint64_t off)
{
    return img_error(img, -r, "writing the %s at 0x%llx: %s", what, (unsigned long long)off,
                     strerror(-r));
}

/* Step 1: the footer at `end`; a longer file (a cut-short allocation
 * before) is cut back so that the footer is its last sector. */
static int vhd_move_footer(struct img *img, struct vhd *s, uint64_t end)
{
    int r = img_write_full(img->fd, s->footer, VHD_FOOTER_SIZE, end);
    if (r < 0)
        return vhd_write_error(img, r, "footer", end);
    int64_t fsize = img_fd_size(img->fd);
    if (fsize > 0 && (uint64_t)fsize > end + VHD_FOOTER_SIZE &&
        ftruncate(img->fd, (off_t)(end + VHD_FOOTER_SIZE)) < 0)
        return img_error(img, errno, "cutting the file after its footer: %s", strerror(errno));
    return 0;
}

/* Steps 1-3 above for block `block`, holding s->lock. */
static int vhd_allocate(struct img *img, struct vhd *s, uint32_t block, uint32_t in,
                        const void *buf, uint32_t len)
{
    uint64_t at = s->next_block, span = (uint64_t)s->bitmap_bytes + s->block_size;
    if (at / VHD_SECTOR >= VHD_BAT_UNUSED)
        return img_error(img, EFBIG, "no room for block %u: the file passes what a BAT entry "
                         "can address", block);
    if (!s->block_buf && !(s->block_buf = malloc(span)))
        return img_error(img, ENOMEM, "cannot allocate a block buffer");
    int r = vhd_move_footer(img, s, at + span);
    if (r < 0)
        return r;
    vhd_step_done(1);
    memset(s->block_buf, 0xff, s->bitmap_bytes);
    memset(s->block_buf + s->bitmap_bytes, 0, s->block_size);
    memcpy(s->block_buf + s->bitmap_bytes + in, buf, len);
    r = img_write_full(img->fd, s->block_buf, span, at);
    if (r < 0)
        return vhd_write_error(img, r, "new block", at);
    s->next_block = at + span;   /* the space is spent, even if step 3 fails */
    vhd_step_done(2);
    uint8_t entry[4];
    put_be32(entry, (uint32_t)(at / VHD_SECTOR));
    r = img_write_full(img->fd, entry, sizeof(entry), s->bat_offset + 4ull * block);
    if (r < 0)
        return vhd_write_error(img, r, "BAT entry", s->bat_offset + 4ull * block);
    s->bat[block] = (uint32_t)(at / VHD_SECTOR);
    vhd_step_done(3);
    return 0;
}

/* Where guest offset `off` of an allocated block lies in the file, or 0
 * when the block is unallocated. */
static uint64_t vhd_host_offset(const struct vhd *s, uint32_t block, uint32_t in)
{
    if (s->bat[block] == VHD_BAT_UNUSED)
        return 0;
    return (uint64_t)s->bat[block] * VHD_SECTOR + s->bitmap_bytes + in;
}

/* Write within one block.  An allocated block never moves, so its bytes
 * are written without the lock. */
static int vhd_write_in_block(struct img *img, struct vhd *s, uint32_t block, uint32_t in,
                              const void *buf, uint32_t len)
{
    pthread_mutex_lock(&s->lock);
    uint64_t host = vhd_host_offset(s, block, in);
    if (!host) {
        int r = vhd_allocate(img, s, block, in, buf, len);
        pthread_mutex_unlock(&s->lock);
        return r;
    }
    pthread_mutex_unlock(&s->lock);
    int r = img_write_full(img->fd, buf, len, host);
    return r < 0 ? vhd_write_error(img, r, "data", host) : 0;
}

static int vhd_check_write(struct img *img, const struct vhd *s, uint64_t off, uint64_t len)
{
    if (!img->read_write)
        return img_error(img, EROFS, "image not opened for writing");
    if (s->type == VHD_TYPE_DIFF)
        return img_error(img, ENOTSUP, "writing to differencing VHDs is not supported");
    if (off > img->size || len > img->size - off)
        return img_error(img, EINVAL, "write of %llu bytes at %llu passes the end of the disk "
                         "(%llu bytes)", (unsigned long long)len, (unsigned long long)off,
                         (unsigned long long)img->size);
    return 0;
}

static int vhd_write(struct img *img, const void *buf, size_t len, uint64_t off)
{
    struct vhd *s = img->priv;
    int r = vhd_check_write(img, s, off, len);
    if (r == 0 && s->type == VHD_TYPE_FIXED) {
        r = img_write_full(img->fd, buf, len, off);
        return r < 0 ? vhd_write_error(img, r, "data", off) : 0;
    }
    const uint8_t *p = buf;
    while (r == 0 && len > 0) {
        uint32_t block = (uint32_t)(off / s->block_size);
        uint32_t in = (uint32_t)(off % s->block_size);
        uint32_t n = s->block_size - in;
        if (n > len)
            n = (uint32_t)len;
        r = vhd_write_in_block(img, s, block, in, p, n);
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
    if (len == 0 || fallocate(fd, mode, (off_t)off, (off_t)len) == 0)
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

/* Unallocated blocks already read as zeros and stay unallocated; allocated
 * ones keep their place and get zeros (a BAT entry is never taken back:
 * qemu would not reuse the space, and other tools expect blocks in order). */
static int vhd_write_zeroes(struct img *img, uint64_t off, uint64_t len, bool may_unmap)
{
    struct vhd *s = img->priv;
    int r = vhd_check_write(img, s, off, len);
    if (r == 0 && s->type == VHD_TYPE_FIXED) {
        r = zero_host_range(img->fd, off, len, may_unmap);
        return r < 0 ? vhd_write_error(img, r, "zeros", off) : 0;
    }
    while (r == 0 && len > 0) {
        uint32_t block = (uint32_t)(off / s->block_size);
        uint32_t in = (uint32_t)(off % s->block_size);
        uint64_t n = s->block_size - in < len ? s->block_size - in : len;
        pthread_mutex_lock(&s->lock);
        uint64_t host = vhd_host_offset(s, block, in);
        pthread_mutex_unlock(&s->lock);
        if (host && (r = zero_host_range(img->fd, host, n, may_unmap)) < 0)
            r = vhd_write_error(img, r, "zeros", host);
        off += n;
        len -= n;
    }
    return r;
}

static int vhd_flush(struct img *img)
{
    return img_sync(img, img->fd, "the image");
}

/* ---- create, as qemu-img create -f vpc [-o subformat=,force_size=] ---- */

#define VHD_BLOCK_SIZE_DEFAULT  (2u << 20)
#define VHD_TIMESTAMP_BASE      946684800   /* 2000-01-01 00:00:00 UTC */
#define VHD_DYNHDR_OFFSET       VHD_FOOTER_SIZE
#define VHD_BAT_OFFSET          (VHD_DYNHDR_OFFSET + VHD_DYNHDR_SIZE)

struct vhd_layout {
    bool fixed, force_size;
    uint64_t size;        /* current size in bytes */
    uint16_t cyls;
    uint8_t heads, secs;
};

/* The CHS geometry of the VHD specification (appendix "CHS calculation")
 * for a number of sectors. */
static void vhd_geometry(uint64_t sectors, struct vhd_layout *l)
{
    uint64_t secs, heads, cyl_heads;
    if (sectors > VHD_MAX_GEOMETRY)
        sectors = VHD_MAX_GEOMETRY;
    if (sectors >= 65535ull * 16 * 63) {
        secs = 255;
        heads = 16;
        cyl_heads = sectors / secs;
    } else {
        secs = 17;
        cyl_heads = sectors / secs;
        heads = (cyl_heads + 1023) / 1024;
        if (heads < 4)
            heads = 4;
        if (cyl_heads >= heads * 1024 || heads > 16) {
            secs = 31;
            heads = 16;
            cyl_heads = sectors / secs;
        }
        if (cyl_heads >= heads * 1024) {
            secs = 63;
            heads = 16;
            cyl_heads = sectors / secs;
        }
    }
    l->cyls = (uint16_t)(cyl_heads / heads);   /* <= 65535 by the bounds above */
    l->heads = (uint8_t)heads;
    l->secs = (uint8_t)secs;
}

static uint64_t chs_sectors(const struct vhd_layout *l)
{
    return (uint64_t)l->cyls * l->heads * l->secs;
}

/* The size as qemu 7.2 settles it: rounded up to sectors, then, unless
 * force_size, up to the first geometry that holds it; readers that go by
 * the geometry (creator "qemu") then see exactly that size.  With
 * force_size, or past what a geometry can hold, the geometry is the
 * maximal one and the size stays as asked (creator "qem2", or the maximal
 * geometry, tell readers to take current_size). */
static int vhd_settle_size(uint64_t asked, struct vhd_layout *l)
{
    if (asked > VHD_MAX_SECTORS * VHD_SECTOR)
        return -EFBIG;
    uint64_t sectors = (asked + VHD_SECTOR - 1) / VHD_SECTOR;
    l->cyls = 65535;
    l->heads = 16;
    l->secs = 255;
    if (!l->force_size && sectors < VHD_MAX_GEOMETRY) {
        l->cyls = l->heads = l->secs = 0;
        for (uint64_t n = sectors; chs_sectors(l) < sectors; n++)
            vhd_geometry(n, l);
    }
    l->size = chs_sectors(l) == VHD_MAX_GEOMETRY ? sectors * VHD_SECTOR
                                                 : chs_sectors(l) * VHD_SECTOR;
    return 0;
}

/* A random (version 4) UUID, stored big-endian as the spec stores it. */
static void vhd_random_uuid(uint8_t uuid[16])
{
    if (getrandom(uuid, 16, 0) != 16) {
        for (int i = 0; i < 16; i++)   /* no entropy source: still unique enough */
            uuid[i] = (uint8_t)(rand() ^ (getpid() >> (i % 4)));
    }
    uuid[6] = (uint8_t)((uuid[6] & 0x0f) | 0x40);
    uuid[8] = (uint8_t)((uuid[8] & 0x3f) | 0x80);
}

/* The footer with qemu 7.2's identity fields: readers (qemu's, ours) pick
 * the size rule by the creator application, "qemu" = geometry and "qem2"
 * = current_size, so those exact names carry the meaning of force_size. */
static void vhd_build_footer(uint8_t *f, const struct vhd_layout *l)
{
    memset(f, 0, VHD_FOOTER_SIZE);
    memcpy(f, "conectix", 8);
    put_be32(f + 8, 2);                        /* features: "reserved", always set */
    put_be32(f + 12, 0x00010000);              /* format version 1.0 */
    put_be64(f + 16, l->fixed ? ~0ull : VHD_DYNHDR_OFFSET);
    put_be32(f + 24, (uint32_t)(time(NULL) - VHD_TIMESTAMP_BASE));
    memcpy(f + 28, l->force_size ? "qem2" : "qemu", 4);
    put_be32(f + 32, 0x00050003);              /* creator version, as qemu's */
    memcpy(f + 36, "Wi2k", 4);
    put_be64(f + 40, l->size);                 /* original size */
    put_be64(f + 48, l->size);                 /* current size */
    put_be16(f + 56, l->cyls);
    f[58] = l->heads;
    f[59] = l->secs;
    put_be32(f + 60, l->fixed ? VHD_TYPE_FIXED : VHD_TYPE_DYNAMIC);
    vhd_random_uuid(f + 68);
    put_be32(f + 64, vhd_checksum(f, VHD_FOOTER_SIZE, 64));
}

static void vhd_build_dynhdr(uint8_t *h, uint32_t entries)
{
    memset(h, 0, VHD_DYNHDR_SIZE);
    memcpy(h, "cxsparse", 8);
    put_be64(h + 8, ~0ull);                    /* no next structure */
    put_be64(h + 16, VHD_BAT_OFFSET);
    put_be32(h + 24, 0x00010000);
    put_be32(h + 28, entries);
    put_be32(h + 32, VHD_BLOCK_SIZE_DEFAULT);
    put_be32(h + 36, vhd_checksum(h, VHD_DYNHDR_SIZE, 36));
}

/* Footer copy, dynamic header, BAT (all unused, padded to a sector with
 * more 0xff as qemu pads it), footer. */
static int vhd_write_dynamic(int fd, const uint8_t *footer, uint64_t size)
{
    uint64_t entries = (size + VHD_BLOCK_SIZE_DEFAULT - 1) / VHD_BLOCK_SIZE_DEFAULT;
    uint64_t bat_bytes = (entries * 4 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
    uint8_t dynhdr[VHD_DYNHDR_SIZE];
    vhd_build_dynhdr(dynhdr, (uint32_t)entries);
    uint8_t *bat = malloc(bat_bytes + 1);
    if (!bat)
        return -ENOMEM;
    memset(bat, 0xff, bat_bytes);
    int r = img_write_full(fd, footer, VHD_FOOTER_SIZE, 0);
    if (r == 0)
        r = img_write_full(fd, dynhdr, sizeof(dynhdr), VHD_DYNHDR_OFFSET);
    if (r == 0)
        r = img_write_full(fd, bat, bat_bytes, VHD_BAT_OFFSET);
    if (r == 0)
        r = img_write_full(fd, footer, VHD_FOOTER_SIZE, VHD_BAT_OFFSET + bat_bytes);
    free(bat);
    return r;
}

/* Data area (sparse) and the footer after it. */
static int vhd_write_fixed(int fd, const uint8_t *footer, uint64_t size)
{
    if (ftruncate(fd, (off_t)size) < 0)
        return -errno;
    return img_write_full(fd, footer, VHD_FOOTER_SIZE, size);
}

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

static int vhd_parse_create_opts(const struct img_create_opts *o, struct vhd_layout *l,
                                 char *err, size_t errlen)
{
    memset(l, 0, sizeof(*l));
    if (o->backing_file)
        return create_fail(err, errlen, ENOTSUP,
                           "Backing file not supported for file format 'vpc'");
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
        if (strcmp(k, "subformat") == 0) {
            if (strcmp(v, "dynamic") != 0 && strcmp(v, "fixed") != 0)
                return create_fail(err, errlen, EINVAL,
                                   "Parameter 'subformat' does not accept value '%s'", v);
            l->fixed = strcmp(v, "fixed") == 0;
        } else if (strcmp(k, "force_size") == 0) {
            if (parse_bool(v, &l->force_size) < 0)
                return create_fail(err, errlen, EINVAL,
                                   "Parameter 'force_size' expects 'on' or 'off'");
        } else {
            return create_fail(err, errlen, EINVAL, "Invalid parameter '%s'", k);
        }
    }
    return 0;
}

static int vhd_create(const char *path, const struct img_create_opts *o, char *err,
                      size_t errlen)
{
    struct vhd_layout l;
    int r = vhd_parse_create_opts(o, &l, err, errlen);
    if (r < 0)
        return r;
    if (vhd_settle_size(o->size, &l) < 0)
        return create_fail(err, errlen, EFBIG, "The image size is too large for file format "
                           "'vpc' (max 2040 GiB)");
    uint8_t footer[VHD_FOOTER_SIZE];
    vhd_build_footer(footer, &l);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return create_fail(err, errlen, errno, "Could not create '%s': %s", path,
                           strerror(errno));
    r = l.fixed ? vhd_write_fixed(fd, footer, l.size) : vhd_write_dynamic(fd, footer, l.size);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r < 0)
        return create_fail(err, errlen, -r, "Could not write '%s': %s", path, strerror(-r));
    return 0;
}

/* As qemu-img lists them for vpc; none is shown unless given. */
static const struct img_create_option vhd_create_options[] = {
    { "size", "size", "Virtual disk size", NULL },
    { "subformat", "str", "VHD type: dynamic (the default) or fixed", NULL },
    { "force_size", "bool (on/off)",
      "Keep the exact size given instead of rounding it to the nearest CHS geometry", NULL },
    { NULL, NULL, NULL, NULL },
};

/* ---- check ---- */

struct vhd_range {
    uint64_t start, end;
    uint32_t block;
};

static int by_start(const void *a, const void *b)
{
    const struct vhd_range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* One finding, counted as a corruption. */
#define vhd_report(res, ...) (img_check_report((res), __VA_ARGS__), (res)->corruptions++)

/* The metadata a block may not lie on, or NULL. */
static const char *vhd_block_on_metadata(const struct vhd *s, uint64_t start, uint64_t end,
                                         uint64_t fsize, bool footer_at_end)
{
    uint64_t bat_end = s->bat_offset + (uint64_t)s->n_bat * 4;
    if (start < VHD_FOOTER_SIZE)
        return "footer copy";
    if (start < s->dynhdr_offset + VHD_DYNHDR_SIZE && end > s->dynhdr_offset)
        return "dynamic header";
    if (start < bat_end && end > s->bat_offset)
        return "block allocation table";
    if (footer_at_end && end > fsize - VHD_FOOTER_SIZE)
        return "footer";
    return NULL;
}

/* Every block inside the file, clear of the footers, the dynamic header,
 * the BAT and every other block; the footer at the end in place (the copy
 * at offset 0 is only a copy).  qemu has no check for VHD. */
static int vhd_check(struct img *img, struct img_check *res, unsigned repair)
{
    struct vhd *s = img->priv;
    if (repair)
        return img_error(img, ENOTSUP, "repairing a vpc image is not supported");
    int64_t fsize = img_fd_size(img->fd);
    if (fsize < 0)
        return img_error(img, (int)-fsize, "cannot get the size: %s", strerror((int)-fsize));
    uint8_t tail[VHD_FOOTER_SIZE];
    bool footer_at_end = fsize >= VHD_FOOTER_SIZE &&
                         pread(img->fd, tail, sizeof(tail), fsize - VHD_FOOTER_SIZE) ==
                             (ssize_t)sizeof(tail) && memcmp(tail, "conectix", 8) == 0;
    if (!footer_at_end)
        vhd_report(res, "ERROR the footer at the end of the file is missing");
    if (s->type == VHD_TYPE_FIXED)
        return 0;
    struct vhd_range *r = malloc(((size_t)s->n_bat + 1) * sizeof(*r));
    if (!r)
        return img_error(img, ENOMEM, "no memory to check %u blocks", s->n_bat);
    size_t n = 0;
    for (uint32_t i = 0; i < s->n_bat; i++) {
        if (s->bat[i] == VHD_BAT_UNUSED)
            continue;
        uint64_t start = (uint64_t)s->bat[i] * VHD_SECTOR;
        uint64_t end = start + s->bitmap_bytes + s->block_size;
        const char *on = vhd_block_on_metadata(s, start, end, (uint64_t)fsize, footer_at_end);
        if (end > (uint64_t)fsize)
            vhd_report(res, "ERROR block %u at 0x%llx lies past the end of the file", i,
                       (unsigned long long)start);
        else if (on)
            vhd_report(res, "ERROR block %u at 0x%llx lies on the %s", i,
                       (unsigned long long)start, on);
        r[n++] = (struct vhd_range){ start, end, i };
    }
    qsort(r, n, sizeof(*r), by_start);
    for (size_t i = 1; i < n; i++)
        if (r[i].start < r[i - 1].end)
            vhd_report(res, "ERROR blocks %u and %u overlap at 0x%llx", r[i - 1].block,
                       r[i].block, (unsigned long long)r[i].start);
    res->total_clusters = s->n_bat;
    res->allocated_clusters = n;
    free(r);
    return 0;
}

const struct img_format img_format_vpc = {
    .name = "vpc",
    .probe = vhd_probe,
    .open = vhd_open,
    .close = vhd_close,
    .map = vhd_map,
    .create = vhd_create,
    .create_options = vhd_create_options,
    .write = vhd_write,
    .write_zeroes = vhd_write_zeroes,
    .flush = vhd_flush,
    .check = vhd_check,
};
