/* Hosted sparse extents ("KDMV"): header, grain directory, grain tables,
 * and the compressed grains of streamOptimized disks.  A grain directory
 * entry is the sector of a grain table; a grain table entry is the sector
 * of a grain (0 = unallocated, 1 = zeroed when the header says so). */
#include "vmdk.h"

#include "core/bytes.h"
#include "core/compress.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define FLAG_NL_DETECT   VMDK_FLAG_NL_DETECT
#define FLAG_ZERO_GRAIN  VMDK_FLAG_ZERO_GRAIN
#define FLAG_MARKERS     VMDK_FLAG_MARKERS
#define GD_AT_END        VMDK_GD_AT_END
#define COMPRESS_NONE    0
#define COMPRESS_DEFLATE VMDK_COMPRESS_DEFLATE
#define MARKER_EOS       0
#define MARKER_FOOTER    3
#define MARKER_SIZE      VMDK_MARKER_SIZE
#define GTE_ZEROED       VMDK_GTE_ZEROED
/* VMware and QEMU write 64 KiB grains; 1 MiB bounds the buffers of a
 * compressed read without refusing anything a known tool makes. */
#define MAX_GRAIN_SECTORS 2048
#define MAX_GTES_PER_GT   512   /* QEMU refuses more; the spec says 512 */
#define MAX_GD_ENTRIES    (32u << 20)
#define GT_CACHE_SLOTS    256

bool vmdk_is_sparse_magic(const uint8_t *buf, size_t len)
{
    return len >= 4 && memcmp(buf, "KDMV", 4) == 0;
}

bool vmdk_is_cowd_magic(const uint8_t *buf, size_t len)
{
    return len >= 4 && memcmp(buf, "COWD", 4) == 0;
}

void vmdk_sparse_header_decode(const uint8_t *b, struct vmdk_sparse_header *h)
{
    h->version = get_le32(b + 4);
    h->flags = get_le32(b + 8);
    h->capacity = get_le64(b + 12);
    h->grain_sectors = get_le64(b + 20);
    h->desc_offset = get_le64(b + 28);
    h->desc_size = get_le64(b + 36);
    h->gtes_per_gt = get_le32(b + 44);
    h->rgd_offset = get_le64(b + 48);
    h->gd_offset = get_le64(b + 56);
    h->grain_offset = get_le64(b + 64);
    h->check_bytes_ok = memcmp(b + 73, "\n \r\n", 4) == 0;
    h->compress_algorithm = get_le16(b + 77);
}

void vmdk_sparse_header_encode(uint8_t *b, const struct vmdk_sparse_header *h)
{
    memset(b, 0, VMDK_HEADER_SIZE);
    memcpy(b, "KDMV", 4);
    put_le32(b + 4, h->version);
    put_le32(b + 8, h->flags);
    put_le64(b + 12, h->capacity);
    put_le64(b + 20, h->grain_sectors);
    put_le64(b + 28, h->desc_offset);
    put_le64(b + 36, h->desc_size);
    put_le32(b + 44, h->gtes_per_gt);
    put_le64(b + 48, h->rgd_offset);
    put_le64(b + 56, h->gd_offset);
    put_le64(b + 64, h->grain_offset);
    memcpy(b + 73, "\n \r\n", 4);
    put_le16(b + 77, h->compress_algorithm);
}

/* ---- open ---- */

/* streamOptimized writers do not know the tables when they start, so the
 * header says "GD at end" and a footer (a copy of the header with the real
 * offsets) sits between a footer marker and the end-of-stream marker in
 * the last three sectors. */
static int read_footer(struct img *img, struct vmdk_sparse *sp)
{
    uint64_t end = sp->file_size & ~(uint64_t)(VMDK_SECTOR - 1);
    uint8_t f[3 * VMDK_SECTOR];
    if (end < VMDK_HEADER_SIZE + sizeof(f))
        return img_error(img, EINVAL, "%s: grain directory is at the end, but the file is too "
                         "small to hold a footer", sp->name);
    int r = img_pread(img, sp->fd, f, sizeof(f), end - sizeof(f), "footer");
    if (r < 0)
        return r;
    const uint8_t *marker = f, *hdr = f + VMDK_SECTOR, *eos = f + 2 * VMDK_SECTOR;
    if (get_le32(marker + 8) != 0 || get_le32(marker + 12) != MARKER_FOOTER ||
        !vmdk_is_sparse_magic(hdr, VMDK_SECTOR) || get_le64(eos) != 0 ||
        get_le32(eos + 8) != 0 || get_le32(eos + 12) != MARKER_EOS)
        return img_error(img, EINVAL, "%s: grain directory is at the end, but there is no "
                         "valid footer before the end-of-stream marker", sp->name);
    vmdk_sparse_header_decode(hdr, &sp->h);
    if (sp->h.gd_offset == GD_AT_END)
        return img_error(img, EINVAL, "%s: the footer, too, puts the grain directory at the end",
                         sp->name);
    return 0;
}

static int check_geometry(struct img *img, struct vmdk_sparse *sp)
{
    const struct vmdk_sparse_header *h = &sp->h;
    if (h->version < 1 || h->version > 3)
        return img_error(img, ENOTSUP, "%s: unsupported sparse extent version %u", sp->name,
                         h->version);
    if ((h->flags & FLAG_NL_DETECT) && !h->check_bytes_ok)
        return img_error(img, EINVAL, "%s: the newline check bytes are damaged (was the file "
                         "copied in text mode?)", sp->name);
    if (h->capacity == 0 || h->capacity > VMDK_MAX_DISK_BYTES / VMDK_SECTOR)
        return img_error(img, EINVAL, "%s: capacity of %llu sectors is absurd", sp->name,
                         (unsigned long long)h->capacity);
    if (h->grain_sectors == 0 || h->grain_sectors > MAX_GRAIN_SECTORS ||
        (h->grain_sectors & (h->grain_sectors - 1)))
        return img_error(img, EINVAL, "%s: grain size of %llu sectors is not a power of two "
                         "from 1 to %d", sp->name, (unsigned long long)h->grain_sectors,
                         MAX_GRAIN_SECTORS);
    if (h->gtes_per_gt == 0 || h->gtes_per_gt > MAX_GTES_PER_GT)
        return img_error(img, EINVAL, "%s: %u entries per grain table (1 to %d allowed)",
                         sp->name, h->gtes_per_gt, MAX_GTES_PER_GT);
    if (h->compress_algorithm != COMPRESS_NONE && h->compress_algorithm != COMPRESS_DEFLATE)
        return img_error(img, ENOTSUP, "%s: unknown compression algorithm %u", sp->name,
                         h->compress_algorithm);
    if (h->grain_offset > sp->file_size / VMDK_SECTOR)
        return img_error(img, EINVAL, "%s: file truncated: grains start at sector %llu, past "
                         "its end", sp->name, (unsigned long long)h->grain_offset);
    return 0;
}

static int check_gd_bounds(struct img *img, struct vmdk_sparse *sp)
{
    const struct vmdk_sparse_header *h = &sp->h;
    uint64_t sectors_per_gt = h->grain_sectors * h->gtes_per_gt;
    uint64_t entries = (h->capacity + sectors_per_gt - 1) / sectors_per_gt;
    if (entries > MAX_GD_ENTRIES)
        return img_error(img, EFBIG, "%s: grain directory of %llu entries is too big",
                         sp->name, (unsigned long long)entries);
    sp->gd_entries = (uint32_t)entries;
    uint64_t bytes = entries * 4;
    if (h->gd_offset == 0 || h->gd_offset > sp->file_size / VMDK_SECTOR ||
        h->gd_offset * VMDK_SECTOR + bytes > sp->file_size)
        return img_error(img, EINVAL, "%s: grain directory at sector %llu (%llu entries) lies "
                         "past the end of the file", sp->name,
                         (unsigned long long)h->gd_offset, (unsigned long long)entries);
    return 0;
}

static int load_gd(struct img *img, struct vmdk_sparse *sp)
{
    uint64_t gt_bytes = (uint64_t)sp->h.gtes_per_gt * 4;
    size_t bytes = (size_t)sp->gd_entries * 4;
    uint8_t *raw = malloc(bytes);
    sp->gd = malloc(bytes);
    if (!raw || !sp->gd) {
        free(raw);
        return img_error(img, ENOMEM, "%s: no memory for the grain directory", sp->name);
    }
    int r = img_pread(img, sp->fd, raw, bytes, sp->h.gd_offset * VMDK_SECTOR, "grain directory");
    for (uint32_t i = 0; r == 0 && i < sp->gd_entries; i++) {
        uint32_t sector = get_le32(raw + 4 * (size_t)i);
        sp->gd[i] = sector;
        if (sector && (uint64_t)sector * VMDK_SECTOR + gt_bytes > sp->file_size)
            r = img_error(img, EINVAL, "%s: grain table %u at sector %u lies past the end of "
                          "the file", sp->name, i, sector);
    }
    free(raw);
    return r;
}

static int set_up(struct img *img, struct vmdk_sparse *sp)
{
    uint8_t buf[VMDK_HEADER_SIZE];
    int64_t size = img_fd_size(sp->fd);
    if (size < 0)
        return img_error(img, (int)-size, "%s: cannot get the size: %s", sp->name,
                         strerror((int)-size));
    sp->file_size = (uint64_t)size;
    if (sp->file_size < VMDK_HEADER_SIZE)
        return img_error(img, EINVAL, "%s: too small to hold a sparse extent header", sp->name);
    int r = img_pread(img, sp->fd, buf, sizeof(buf), 0, "sparse extent header");
    if (r < 0)
        return r;
    if (!vmdk_is_sparse_magic(buf, sizeof(buf)))
        return img_error(img, EINVAL, "%s: not a VMDK sparse extent (no KDMV magic)", sp->name);
    vmdk_sparse_header_decode(buf, &sp->h);
    if (sp->h.gd_offset == GD_AT_END && (r = read_footer(img, sp)) < 0)
        return r;
    if ((r = check_geometry(img, sp)) < 0 || (r = check_gd_bounds(img, sp)) < 0)
        return r;
    sp->grain_bytes = sp->h.grain_sectors * VMDK_SECTOR;
    sp->size = sp->h.capacity * VMDK_SECTOR;
    sp->compressed = sp->h.compress_algorithm == COMPRESS_DEFLATE;
    sp->has_marker = sp->h.flags & FLAG_MARKERS;
    sp->zero_grain = sp->h.flags & FLAG_ZERO_GRAIN;
    if ((r = load_gd(img, sp)) < 0)
        return r;
    sp->n_slots = sp->gd_entries < GT_CACHE_SLOTS ? sp->gd_entries : GT_CACHE_SLOTS;
    sp->slots = calloc(sp->n_slots ? sp->n_slots : 1, sizeof(*sp->slots));
    if (!sp->slots)
        return img_error(img, ENOMEM, "%s: no memory for the grain table cache", sp->name);
    return 0;
}

int vmdk_sparse_open(struct img *img, int fd, const char *name, struct vmdk_sparse **out)
{
    struct vmdk_sparse *sp = calloc(1, sizeof(*sp));
    *out = NULL;
    if (!sp)
        return -ENOMEM;
    sp->fd = fd;
    sp->name = name;
    pthread_mutex_init(&sp->gt_lock, NULL);
    pthread_mutex_init(&sp->grain_lock, NULL);
    pthread_mutex_init(&sp->write_lock, NULL);
    int r = set_up(img, sp);
    if (r == 0 && img->read_write)
        r = vmdk_sparse_prepare_write(img, sp);
    if (r < 0) {
        vmdk_sparse_close(sp);
        return r;
    }
    *out = sp;
    return 0;
}

void vmdk_sparse_close(struct vmdk_sparse *sp)
{
    if (!sp)
        return;
    for (uint32_t i = 0; sp->slots && i < sp->n_slots; i++)
        free(sp->slots[i].gtes);
    free(sp->slots);
    free(sp->gd);
    free(sp->grain_buf);
    free(sp->rgd);
    vmdk_stream_free(sp);
    pthread_mutex_destroy(&sp->gt_lock);
    pthread_mutex_destroy(&sp->grain_lock);
    pthread_mutex_destroy(&sp->write_lock);
    free(sp);
}

/* ---- grain lookup ---- */

static int load_gt(struct img *img, struct vmdk_sparse *sp, struct vmdk_gt_slot *slot,
                   uint32_t gt_index)
{
    size_t n = sp->h.gtes_per_gt;
    uint8_t raw[MAX_GTES_PER_GT * 4];
    if (!slot->gtes && !(slot->gtes = malloc(n * sizeof(uint32_t))))
        return img_error(img, ENOMEM, "%s: no memory for a grain table", sp->name);
    slot->valid = false;
    int r = img_pread(img, sp->fd, raw, n * 4, (uint64_t)sp->gd[gt_index] * VMDK_SECTOR,
                      "grain table");
    if (r < 0)
        return r;
    for (size_t i = 0; i < n; i++)
        slot->gtes[i] = get_le32(raw + 4 * i);
    slot->gt_index = gt_index;
    slot->valid = true;
    return 0;
}

/* The grain table entry of `grain`, and how many grains from it on are
 * known to share the answer without looking (a whole missing table). */
static int lookup_gte(struct img *img, struct vmdk_sparse *sp, uint64_t grain, uint32_t *gte,
                      uint64_t *run)
{
    uint32_t gt_index = (uint32_t)(grain / sp->h.gtes_per_gt);
    uint32_t in_gt = (uint32_t)(grain % sp->h.gtes_per_gt);
    if (sp->stream && vmdk_stream_lookup(sp, grain, gte)) {
        *run = 1;
        return 0;
    }
    if (sp->gd[gt_index] == 0) {
        *gte = 0;
        *run = sp->h.gtes_per_gt - in_gt;
        return 0;
    }
    *run = 1;
    pthread_mutex_lock(&sp->gt_lock);
    struct vmdk_gt_slot *slot = &sp->slots[gt_index % sp->n_slots];
    int r = 0;
    if (!slot->valid || slot->gt_index != gt_index)
        r = load_gt(img, sp, slot, gt_index);
    if (r == 0)
        *gte = slot->gtes[in_gt];
    pthread_mutex_unlock(&sp->gt_lock);
    return r;
}

int vmdk_sparse_gte(struct img *img, struct vmdk_sparse *sp, uint64_t grain, uint32_t *gte)
{
    uint64_t run;
    return lookup_gte(img, sp, grain, gte, &run);
}

void vmdk_sparse_cache_gte(struct vmdk_sparse *sp, uint32_t gt_index, uint32_t in_gt,
                           uint32_t gte)
{
    pthread_mutex_lock(&sp->gt_lock);
    struct vmdk_gt_slot *slot = &sp->slots[gt_index % sp->n_slots];
    if (slot->valid && slot->gt_index == gt_index)
        slot->gtes[in_gt] = gte;
    pthread_mutex_unlock(&sp->gt_lock);
}

struct grain_answer {
    enum img_kind kind;
    bool compressed;
    uint64_t host;    /* byte offset of the grain (or its marker) */
    uint64_t run;     /* grains sharing this answer */
};

static int answer_grain(struct img *img, struct vmdk_sparse *sp, uint64_t grain,
                        struct grain_answer *a)
{
    uint32_t gte = 0;
    int r = lookup_gte(img, sp, grain, &gte, &a->run);
    if (r < 0)
        return r;
    a->compressed = false;
    a->host = 0;
    if (gte == 0) {
        a->kind = IMG_UNALLOCATED;
    } else if (gte == GTE_ZEROED && sp->zero_grain) {
        a->kind = IMG_ZERO;
    } else {
        a->kind = IMG_DATA;
        a->compressed = sp->compressed;
        a->host = (uint64_t)gte * VMDK_SECTOR;
        if (a->host >= sp->file_size ||
            (a->compressed && sp->has_marker && a->host + MARKER_SIZE > sp->file_size))
            return img_error(img, EIO, "%s: grain table entry of grain %llu points to sector "
                             "%u, past the end of the file", sp->name,
                             (unsigned long long)grain, gte);
    }
    return 0;
}

/* ---- map ---- */

/* Bytes of a plain grain present in the file from `host` on: QEMU reads
 * a grain cut short by the end of the file as zeros, and so do we. */
static uint64_t present_bytes(const struct vmdk_sparse *sp, uint64_t host, uint64_t want)
{
    if (host >= sp->file_size)
        return 0;
    return want < sp->file_size - host ? want : sp->file_size - host;
}

static bool same_run(const struct grain_answer *a, const struct grain_answer *b)
{
    return a->kind == b->kind && a->compressed == b->compressed;
}

int vmdk_sparse_map(struct img *img, struct vmdk_sparse *sp, uint64_t off, uint64_t len,
                    struct img_extent *ext)
{
    uint64_t gb = sp->grain_bytes, grain = off / gb, in = off % gb;
    struct grain_answer first, next;
    int r = answer_grain(img, sp, grain, &first);
    if (r < 0)
        return r;
    bool plain = first.kind == IMG_DATA && !first.compressed;
    uint64_t n = first.run * gb - in;
    n = n < len ? n : len;
    ext->kind = first.kind;
    ext->compressed = first.compressed;
    if (plain) {
        uint64_t have = present_bytes(sp, first.host + in, n);
        if (have == 0) {
            ext->kind = IMG_ZERO;
            ext->len = n;
            return 0;
        }
        ext->fd = sp->fd;
        ext->host_off = first.host + in;
        if (have < n) {
            ext->len = have;
            return 0;
        }
    }
    while (n < len) {
        uint64_t g = (off + n) / gb;
        if ((r = answer_grain(img, sp, g, &next)) < 0)
            return r;
        if (!same_run(&first, &next))
            break;
        uint64_t step = next.run * gb < len - n ? next.run * gb : len - n;
        if (plain) {
            if (next.host != ext->host_off + n)
                break;
            uint64_t have = present_bytes(sp, next.host, step);
            n += have;
            if (have < step)
                break;
            continue;
        }
        n += step;
    }
    ext->len = n;
    return 0;
}

/* ---- compressed grains ---- */

static int read_compressed_input(struct img *img, struct vmdk_sparse *sp, uint64_t host,
                                 uint8_t **in, size_t *in_len)
{
    uint64_t off = host, len;
    if (sp->has_marker) {
        uint8_t m[MARKER_SIZE];
        int r = img_pread(img, sp->fd, m, sizeof(m), host, "grain marker");
        if (r < 0)
            return r;
        len = get_le32(m + 8);
        off = host + MARKER_SIZE;
        if (len == 0 || len > 2 * sp->grain_bytes || len > sp->file_size - off)
            return img_error(img, EIO, "%s: compressed grain at 0x%llx claims %llu bytes, out "
                             "of bounds", sp->name, (unsigned long long)host,
                             (unsigned long long)len);
    } else {
        /* No marker: the stream ends where it ends; QEMU reads two grains. */
        len = sp->file_size - host < 2 * sp->grain_bytes ? sp->file_size - host
                                                          : 2 * sp->grain_bytes;
    }
    *in = malloc(len);
    if (!*in)
        return img_error(img, ENOMEM, "%s: no memory for a compressed grain", sp->name);
    *in_len = len;
    int r = img_pread(img, sp->fd, *in, len, off, "compressed grain");
    if (r < 0) {
        free(*in);
        *in = NULL;
    }
    return r;
}

/* Inflate `grain` into sp->grain_buf; grain_lock held. */
static int inflate_grain(struct img *img, struct vmdk_sparse *sp, uint64_t grain)
{
    struct grain_answer a;
    int r = answer_grain(img, sp, grain, &a);
    if (r < 0)
        return r;
    if (a.kind != IMG_DATA || !a.compressed)
        return img_error(img, EIO, "%s: grain %llu is not a compressed grain", sp->name,
                         (unsigned long long)grain);
    if (!sp->grain_buf && !(sp->grain_buf = malloc(sp->grain_bytes)))
        return img_error(img, ENOMEM, "%s: no memory for a grain", sp->name);
    uint8_t *in = NULL;
    size_t in_len = 0;
    if ((r = read_compressed_input(img, sp, a.host, &in, &in_len)) < 0)
        return r;
    ssize_t got = decompress_bounded(DECOMPRESS_ZLIB, in, in_len, sp->grain_buf,
                                     sp->grain_bytes);
    free(in);
    uint64_t want = sp->size - grain * sp->grain_bytes;
    want = want < sp->grain_bytes ? want : sp->grain_bytes;
    if (got == -EOVERFLOW)
        return img_error(img, EIO, "%s: compressed grain at 0x%llx inflates to more than a "
                         "grain", sp->name, (unsigned long long)a.host);
    if (got < 0)
        return img_error(img, got == -ENOMEM ? ENOMEM : EIO, "%s: compressed grain at 0x%llx: "
                         "corrupt deflate stream", sp->name, (unsigned long long)a.host);
    if ((uint64_t)got < want)
        return img_error(img, EIO, "%s: compressed grain at 0x%llx inflates to %zd bytes, "
                         "short of %llu", sp->name, (unsigned long long)a.host, got,
                         (unsigned long long)want);
    memset(sp->grain_buf + got, 0, sp->grain_bytes - (uint64_t)got);
    return 0;
}

int vmdk_sparse_read(struct img *img, struct vmdk_sparse *sp, void *buf, size_t len,
                     uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        uint64_t grain = off / sp->grain_bytes, in = off % sp->grain_bytes;
        size_t n = sp->grain_bytes - in < len ? (size_t)(sp->grain_bytes - in) : len;
        pthread_mutex_lock(&sp->grain_lock);
        int r = 0;
        if (!sp->grain_cached || sp->cached_grain != grain) {
            sp->grain_cached = false;
            r = inflate_grain(img, sp, grain);
            sp->grain_cached = r == 0;
            sp->cached_grain = grain;
        }
        if (r == 0)
            memcpy(p, sp->grain_buf + in, n);
        pthread_mutex_unlock(&sp->grain_lock);
        if (r < 0)
            return r;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}
