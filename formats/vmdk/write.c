/* Writes to hosted sparse extents.  A new grain (and, where its grain
 * directory entry is empty, a new grain table) is appended at the end of
 * the file; the order of the writes keeps the file readable after a crash
 * at any point: grain data, then the grain table entry that points at it,
 * then (for a new table) the directory entries, main and redundant.
 * A grain only partly written is completed from what the layer showed
 * before: the backing chain, or zeros. */
#include "vmdk.h"

#include "core/bytes.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_error(struct img *img, struct vmdk_sparse *sp, int r, const char *what,
                       uint64_t off)
{
    return img_error(img, -r, "%s: writing the %s at 0x%llx: %s", sp->name, what,
                     (unsigned long long)off, strerror(-r));
}

static uint64_t round_up_sector(uint64_t n)
{
    return (n + VMDK_SECTOR - 1) & ~(uint64_t)(VMDK_SECTOR - 1);
}

/* The redundant grain directory mirrors the main one; both are kept. */
static int load_rgd(struct img *img, struct vmdk_sparse *sp)
{
    uint64_t off = sp->h.rgd_offset * VMDK_SECTOR, bytes = (uint64_t)sp->gd_entries * 4;
    if (!(sp->h.flags & VMDK_FLAG_RGD) || sp->h.rgd_offset == 0)
        return 0;
    if (sp->h.rgd_offset > sp->file_size / VMDK_SECTOR || off + bytes > sp->file_size)
        return img_error(img, EINVAL, "%s: redundant grain directory at sector %llu lies past "
                         "the end of the file", sp->name, (unsigned long long)sp->h.rgd_offset);
    uint8_t *raw = malloc(bytes);
    sp->rgd = malloc(bytes);
    if (!raw || !sp->rgd) {
        free(raw);
        return img_error(img, ENOMEM, "%s: no memory for the grain directory", sp->name);
    }
    int r = img_pread(img, sp->fd, raw, bytes, off, "redundant grain directory");
    uint64_t gt_bytes = (uint64_t)sp->h.gtes_per_gt * 4;
    for (uint32_t i = 0; r == 0 && i < sp->gd_entries; i++) {
        sp->rgd[i] = get_le32(raw + 4 * (size_t)i);
        if (sp->rgd[i] && (uint64_t)sp->rgd[i] * VMDK_SECTOR + gt_bytes > sp->file_size)
            r = img_error(img, EINVAL, "%s: redundant grain table %u lies past the end of the "
                          "file", sp->name, i);
        /* An image whose two directories disagree on which tables exist
         * would be left worse by our writes; refuse it. */
        if (r == 0 && (sp->rgd[i] == 0) != (sp->gd[i] == 0))
            r = img_error(img, EINVAL, "%s: grain directory and its redundant copy disagree "
                          "at entry %u; run a check first", sp->name, i);
    }
    free(raw);
    return r;
}

int vmdk_sparse_prepare_write(struct img *img, struct vmdk_sparse *sp)
{
    sp->alloc_end = round_up_sector(sp->file_size);
    if (sp->alloc_end < sp->h.grain_offset * VMDK_SECTOR)
        sp->alloc_end = sp->h.grain_offset * VMDK_SECTOR;
    if (sp->compressed)
        return vmdk_stream_open(img, sp);
    return load_rgd(img, sp);
}

/* ---- grain tables ---- */

/* Append a zeroed grain table (and its redundant twin) for directory entry
 * `gt_index`, then point the directory entries at them. */
static int allocate_gt(struct img *img, struct vmdk_sparse *sp, uint32_t gt_index)
{
    uint64_t bytes = round_up_sector((uint64_t)sp->h.gtes_per_gt * 4);
    uint8_t zeros[VMDK_SECTOR * 4] = { 0 };   /* 512 entries at most */
    uint64_t gt = sp->alloc_end, rgt = sp->rgd ? gt + bytes : 0;
    int r = img_write_full(sp->fd, zeros, bytes, gt);
    if (r == 0 && sp->rgd)
        r = img_write_full(sp->fd, zeros, bytes, rgt);
    if (r < 0)
        return write_error(img, sp, r, "grain table", gt);
    sp->alloc_end += sp->rgd ? 2 * bytes : bytes;
    uint8_t e[4];
    put_le32(e, (uint32_t)(gt / VMDK_SECTOR));
    r = img_write_full(sp->fd, e, 4, sp->h.gd_offset * VMDK_SECTOR + 4 * (uint64_t)gt_index);
    if (r == 0 && sp->rgd) {
        put_le32(e, (uint32_t)(rgt / VMDK_SECTOR));
        r = img_write_full(sp->fd, e, 4, sp->h.rgd_offset * VMDK_SECTOR +
                            4 * (uint64_t)gt_index);
    }
    if (r < 0)
        return write_error(img, sp, r, "grain directory", sp->h.gd_offset * VMDK_SECTOR);
    if (sp->rgd)
        sp->rgd[gt_index] = (uint32_t)(rgt / VMDK_SECTOR);
    if (sp->file_size < sp->alloc_end)
        sp->file_size = sp->alloc_end;
    sp->gd[gt_index] = (uint32_t)(gt / VMDK_SECTOR);
    return 0;
}

/* Set `n` consecutive entries of one grain table, from grain `grain` on,
 * to `first`, first + step, ... in both copies of the table. */
static int set_gtes(struct img *img, struct vmdk_sparse *sp, uint64_t grain, uint32_t n,
                    uint32_t first, uint32_t step)
{
    uint32_t gt_index = (uint32_t)(grain / sp->h.gtes_per_gt);
    uint32_t in_gt = (uint32_t)(grain % sp->h.gtes_per_gt);
    uint8_t buf[VMDK_SECTOR * 4];
    for (uint32_t i = 0; i < n; i++)
        put_le32(buf + 4 * i, first + i * step);
    uint64_t at = (uint64_t)sp->gd[gt_index] * VMDK_SECTOR + 4 * (uint64_t)in_gt;
    int r = img_write_full(sp->fd, buf, 4 * (size_t)n, at);
    if (r == 0 && sp->rgd)
        r = img_write_full(sp->fd, buf, 4 * (size_t)n,
                            (uint64_t)sp->rgd[gt_index] * VMDK_SECTOR + 4 * (uint64_t)in_gt);
    if (r < 0)
        return write_error(img, sp, r, "grain table", at);
    for (uint32_t i = 0; i < n; i++)
        vmdk_sparse_cache_gte(sp, gt_index, in_gt + i, first + i * step);
    return 0;
}

static int ensure_gt(struct img *img, struct vmdk_sparse *sp, uint64_t grain)
{
    uint32_t gt_index = (uint32_t)(grain / sp->h.gtes_per_gt);
    if (sp->gd[gt_index] != 0)
        return 0;
    return allocate_gt(img, sp, gt_index);
}

/* ---- grains ---- */

static bool gte_is_data(const struct vmdk_sparse *sp, uint32_t gte)
{
    return gte > 1 || (gte == VMDK_GTE_ZEROED && !sp->zero_grain);
}

/* What the layer shows in the unallocated grain at disk offset `guest`
 * (the grain's start): the backing chain's bytes, zeros past its end. */
static int fill_from_below(struct img *img, struct vmdk_sparse *sp, uint32_t gte,
                           uint64_t guest, uint8_t *grain)
{
    memset(grain, 0, sp->grain_bytes);
    struct img *b = img->backing;
    if (gte == VMDK_GTE_ZEROED || !b || guest >= b->size)
        return 0;
    uint64_t n = b->size - guest < sp->grain_bytes ? b->size - guest : sp->grain_bytes;
    int r = img_read(b, grain, n, guest);
    if (r < 0)
        return img_error(img, -r, "%s: copy-on-write read of the backing file at 0x%llx: %s",
                         sp->name, (unsigned long long)guest, b->errmsg);
    return 0;
}

/* Append whole grains [grain, grain+n) from `data` (all unallocated and in
 * one grain table), then point the table at them. */
static int append_grains(struct img *img, struct vmdk_sparse *sp, uint64_t grain, uint32_t n,
                         const uint8_t *data)
{
    int r = ensure_gt(img, sp, grain);
    if (r < 0)
        return r;
    uint64_t at = sp->alloc_end, bytes = (uint64_t)n * sp->grain_bytes;
    if ((at + bytes) / VMDK_SECTOR > UINT32_MAX)
        return img_error(img, EFBIG, "%s: the file would pass 2 TiB, beyond what a grain "
                         "table entry can address", sp->name);
    if ((r = img_write_full(sp->fd, data, bytes, at)) < 0)
        return write_error(img, sp, r, "grain", at);
    sp->alloc_end += bytes;
    if (sp->file_size < sp->alloc_end)
        sp->file_size = sp->alloc_end;
    return set_gtes(img, sp, grain, n, (uint32_t)(at / VMDK_SECTOR),
                    (uint32_t)sp->h.grain_sectors);
}

/* Write part of one unallocated (or zeroed) grain: complete it first. */
static int write_partial_new(struct img *img, struct vmdk_sparse *sp, uint64_t guest,
                             uint64_t grain, uint32_t gte, const uint8_t *buf,
                             uint64_t in, uint64_t n)
{
    uint8_t *g = malloc(sp->grain_bytes);
    if (!g)
        return img_error(img, ENOMEM, "%s: no memory for a grain", sp->name);
    int r = fill_from_below(img, sp, gte, guest + grain * sp->grain_bytes, g);
    if (r == 0) {
        if (buf)
            memcpy(g + in, buf, n);
        else
            memset(g + in, 0, n);
        r = append_grains(img, sp, grain, 1, g);
    }
    free(g);
    return r;
}

static int overwrite(struct img *img, struct vmdk_sparse *sp, uint32_t gte, uint64_t in,
                     const uint8_t *buf, uint64_t n)
{
    uint64_t at = (uint64_t)gte * VMDK_SECTOR + in;
    if (gte < sp->h.grain_offset)
        return img_error(img, EIO, "%s: grain table entry %u points into the metadata; "
                         "refusing to write there", sp->name, gte);
    int r;
    if (buf) {
        r = img_write_full(sp->fd, buf, n, at);
    } else {
        uint8_t *z = calloc(1, n);
        r = z ? img_write_full(sp->fd, z, n, at) : -ENOMEM;
        free(z);
    }
    if (r < 0)
        return write_error(img, sp, r, "grain", at);
    if (sp->file_size < at + n)
        sp->file_size = at + n;
    return 0;
}

/* How many grains from `grain` on (at most `max`, within one table) are
 * unallocated and wholly covered by the write. */
static int count_new_whole(struct img *img, struct vmdk_sparse *sp, uint64_t grain,
                           uint64_t max, uint32_t *count)
{
    uint64_t room = sp->h.gtes_per_gt - grain % sp->h.gtes_per_gt;
    uint64_t limit = max < room ? max : room;
    uint32_t n = 0;
    for (; n < limit; n++) {
        uint32_t gte;
        int r = vmdk_sparse_gte(img, sp, grain + n, &gte);
        if (r < 0)
            return r;
        if (gte != 0 && !(gte == VMDK_GTE_ZEROED && sp->zero_grain))
            break;
    }
    *count = n;
    return 0;
}

/* Does the unallocated (or zeroed) grain read as zeros already? */
static bool reads_zero_below(const struct img *img, const struct vmdk_sparse *sp,
                             uint64_t guest, uint64_t grain, uint32_t gte)
{
    if (gte == VMDK_GTE_ZEROED)
        return true;
    return !img->backing || guest + grain * sp->grain_bytes >= img->backing->size;
}

/* One step of a write: a run of whole new grains, or one grain's part.
 * Returns the bytes done, or a negative errno. */
static int64_t write_step(struct img *img, struct vmdk_sparse *sp, uint64_t guest,
                          const uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t gb = sp->grain_bytes, grain = off / gb, in = off % gb;
    uint64_t n = gb - in < len ? gb - in : len;
    uint32_t gte;
    int r = vmdk_sparse_gte(img, sp, grain, &gte);
    if (r < 0)
        return r;
    if (!buf && !gte_is_data(sp, gte) && reads_zero_below(img, sp, guest, grain, gte))
        r = 0;   /* zeros over zeros */
    else if (gte_is_data(sp, gte))
        r = overwrite(img, sp, gte, in, buf, n);
    else if (in == 0 && n == gb && buf) {
        uint32_t run;
        if ((r = count_new_whole(img, sp, grain, len / gb, &run)) < 0)
            return r;
        n = (uint64_t)run * gb;
        r = append_grains(img, sp, grain, run, buf);
    } else {
        r = write_partial_new(img, sp, guest, grain, gte, buf, in, n);
    }
    return r < 0 ? r : (int64_t)n;
}

/* buf NULL writes zeros. */
static int write_range(struct img *img, struct vmdk_sparse *sp, uint64_t guest,
                       const uint8_t *buf, uint64_t len, uint64_t off)
{
    pthread_mutex_lock(&sp->write_lock);
    int r = 0;
    while (len > 0) {
        int64_t done = write_step(img, sp, guest, buf, len, off);
        if (done < 0) {
            r = (int)done;
            break;
        }
        off += (uint64_t)done;
        len -= (uint64_t)done;
        if (buf)
            buf += done;
    }
    pthread_mutex_unlock(&sp->write_lock);
    return r;
}

int vmdk_sparse_write(struct img *img, struct vmdk_sparse *sp, uint64_t guest,
                      const uint8_t *buf, uint64_t len, uint64_t off)
{
    if (sp->compressed)
        return vmdk_stream_write(img, sp, guest, buf, len, off);
    return write_range(img, sp, guest, buf, len, off);
}

/* ---- zeros ---- */

/* A whole grain made to read as zeros: the zeroed-grain entry where the
 * header allows it; nothing where it is unallocated and nothing lies
 * below; zero bytes otherwise. */
static int zero_grain(struct img *img, struct vmdk_sparse *sp, uint64_t guest, uint64_t grain)
{
    uint32_t gte;
    int r = vmdk_sparse_gte(img, sp, grain, &gte);
    if (r < 0)
        return r;
    if (sp->zero_grain) {
        if (gte == VMDK_GTE_ZEROED)
            return 0;
        if ((r = ensure_gt(img, sp, grain)) < 0)
            return r;
        return set_gtes(img, sp, grain, 1, VMDK_GTE_ZEROED, 0);
    }
    if (!gte_is_data(sp, gte) && reads_zero_below(img, sp, guest, grain, gte))
        return 0;
    if (gte_is_data(sp, gte))
        return overwrite(img, sp, gte, 0, NULL, sp->grain_bytes);
    return write_partial_new(img, sp, guest, grain, gte, NULL, 0, sp->grain_bytes);
}

int vmdk_sparse_zero(struct img *img, struct vmdk_sparse *sp, uint64_t guest, uint64_t len,
                     uint64_t off)
{
    if (sp->compressed)
        return vmdk_stream_zero(img, sp, guest, len, off);
    uint64_t gb = sp->grain_bytes;
    while (len > 0) {
        uint64_t in = off % gb, n = gb - in < len ? gb - in : len;
        int r;
        if (in == 0 && (n == gb || off + n == sp->size)) {
            pthread_mutex_lock(&sp->write_lock);
            r = zero_grain(img, sp, guest, off / gb);
            pthread_mutex_unlock(&sp->write_lock);
        } else {
            r = write_range(img, sp, guest, NULL, n, off);
        }
        if (r < 0)
            return r;
        off += n;
        len -= n;
    }
    return 0;
}

int vmdk_sparse_flush(struct img *img, struct vmdk_sparse *sp)
{
    if (sp->stream) {
        int r = vmdk_stream_finish(img, sp);
        if (r < 0)
            return r;
    }
    return img_sync(img, sp->fd, sp->name);
}
