/* vmdk check: every flat file holds its whole extent; every table and
 * grain of every hosted sparse extent lies inside its file, and no two of
 * them share a sector.  QEMU's check asks
 * only the first question; grains that overlap a table or each other read
 * as garbage and turn any write into damage elsewhere. */
#include "vmdk.h"

#include "core/bytes.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* Above this file size the sector map would cost more than 64 MiB: such
 * an extent is checked for bounds only. */
#define MAX_MAPPED_FILE (UINT64_C(256) << 30)

struct checker {
    struct img *img;
    struct img_check *res;
    const struct vmdk_sparse *sp;
    uint64_t file_sectors;   /* whole or partial sectors of the file */
    uint8_t *used;           /* one bit per sector, or NULL (bounds only) */
};

/* A finding, as the core hands it on to imgctl. */
#define report(ck, ...) img_check_report((ck)->res, __VA_ARGS__)

/* Take [sector, sector+count) for one structure: it must lie in the file
 * and be nobody else's.  One finding per structure, however long. */
static void claim(struct checker *ck, uint64_t sector, uint64_t count, const char *what,
                  uint64_t index)
{
    if (sector > ck->file_sectors || count > ck->file_sectors - sector) {
        report(ck, "ERROR %s %llu at sector %llu lies past the end of %s", what,
               (unsigned long long)index, (unsigned long long)sector, ck->sp->name);
        ck->res->corruptions++;
        return;
    }
    if (!ck->used)
        return;
    bool overlap = false;
    for (uint64_t s = sector; s < sector + count; s++) {
        uint8_t bit = (uint8_t)(1u << (s & 7));
        overlap |= (ck->used[s >> 3] & bit) != 0;
        ck->used[s >> 3] |= bit;
    }
    if (overlap) {
        report(ck, "ERROR %s %llu at sector %llu overlaps another table or grain of %s", what,
               (unsigned long long)index, (unsigned long long)sector, ck->sp->name);
        ck->res->corruptions++;
    }
}

static uint64_t sectors_of(uint64_t bytes)
{
    return (bytes + VMDK_SECTOR - 1) / VMDK_SECTOR;
}

/* Sectors a grain takes: a whole grain, or its marker and stream. */
static int grain_sectors(struct checker *ck, uint32_t gte, uint64_t *count)
{
    const struct vmdk_sparse *sp = ck->sp;
    if (!sp->compressed) {
        *count = sp->h.grain_sectors;
        return 0;
    }
    if (!sp->has_marker) {
        *count = 1;   /* the stream's length is not written down */
        return 0;
    }
    uint8_t m[VMDK_MARKER_SIZE];
    if ((uint64_t)gte * VMDK_SECTOR + sizeof(m) > sp->file_size) {
        *count = 1;   /* claim() reports it as past the end */
        return 0;
    }
    int r = img_pread(ck->img, sp->fd, m, sizeof(m), (uint64_t)gte * VMDK_SECTOR,
                      "grain marker");
    if (r < 0)
        return r;
    *count = sectors_of(VMDK_MARKER_SIZE + (uint64_t)get_le32(m + 8));
    return 0;
}

/* One grain table (of the directory or of its redundant copy): the table
 * itself, and with `grains` the grains it points at. */
static int check_table(struct checker *ck, uint32_t gt_sector, uint32_t index, bool grains,
                       uint8_t *buf)
{
    const struct vmdk_sparse *sp = ck->sp;
    uint64_t bytes = (uint64_t)sp->h.gtes_per_gt * 4;
    claim(ck, gt_sector, sectors_of(bytes), grains ? "grain table" : "redundant grain table",
          index);
    if (!grains || (uint64_t)gt_sector * VMDK_SECTOR + bytes > sp->file_size)
        return 0;
    int r = img_pread(ck->img, sp->fd, buf, bytes, (uint64_t)gt_sector * VMDK_SECTOR,
                      "grain table");
    if (r < 0) {
        report(ck, "ERROR cannot read grain table %u: %s", index, ck->img->errmsg);
        ck->res->check_errors++;
        return 0;
    }
    for (uint32_t i = 0; i < sp->h.gtes_per_gt; i++) {
        uint32_t gte = get_le32(buf + 4 * (size_t)i);
        if (gte == 0 || (gte == VMDK_GTE_ZEROED && sp->zero_grain))
            continue;
        uint64_t count;
        r = grain_sectors(ck, gte, &count);
        if (r < 0)
            return r;
        claim(ck, gte, count, "grain", (uint64_t)index * sp->h.gtes_per_gt + i);
    }
    return 0;
}

/* The redundant directory, when the header names one. */
static int check_redundant(struct checker *ck, uint8_t *buf)
{
    const struct vmdk_sparse *sp = ck->sp;
    if (!(sp->h.flags & VMDK_FLAG_RGD) || sp->h.rgd_offset == 0 ||
        sp->h.rgd_offset == VMDK_GD_AT_END)
        return 0;
    uint64_t bytes = (uint64_t)sp->gd_entries * 4;
    claim(ck, sp->h.rgd_offset, sectors_of(bytes), "redundant grain directory", 0);
    if (sp->h.rgd_offset * VMDK_SECTOR + bytes > sp->file_size)
        return 0;
    uint8_t *rgd = malloc(bytes ? bytes : 1);
    if (!rgd)
        return img_error(ck->img, ENOMEM, "%s: no memory for the redundant directory",
                         sp->name);
    int r = img_pread(ck->img, sp->fd, rgd, bytes, sp->h.rgd_offset * VMDK_SECTOR,
                      "redundant grain directory");
    for (uint32_t i = 0; r == 0 && i < sp->gd_entries; i++) {
        uint32_t s = get_le32(rgd + 4 * (size_t)i);
        if (s)
            r = check_table(ck, s, i, false, buf);
    }
    free(rgd);
    return r;
}

static int check_sparse(struct img *img, struct img_check *res, const struct vmdk_sparse *sp)
{
    struct checker ck = { .img = img, .res = res, .sp = sp,
                          .file_sectors = sectors_of(sp->file_size) };
    if (sp->file_size <= MAX_MAPPED_FILE && !(ck.used = calloc(ck.file_sectors / 8 + 1, 1)))
        return img_error(img, ENOMEM, "%s: no memory for the sector map", sp->name);
    uint8_t *buf = malloc((size_t)sp->h.gtes_per_gt * 4);
    if (!buf) {
        free(ck.used);
        return img_error(img, ENOMEM, "%s: no memory for a grain table", sp->name);
    }
    claim(&ck, 0, 1, "header", 0);
    if (sp->h.desc_offset && sp->h.desc_size)
        claim(&ck, sp->h.desc_offset, sp->h.desc_size, "descriptor", 0);
    claim(&ck, sp->h.gd_offset, sectors_of((uint64_t)sp->gd_entries * 4), "grain directory",
          0);
    int r = check_redundant(&ck, buf);
    for (uint32_t i = 0; r == 0 && i < sp->gd_entries; i++)
        if (sp->gd[i])
            r = check_table(&ck, sp->gd[i], i, true, buf);
    free(buf);
    free(ck.used);
    return r;
}

/* A flat file must hold its whole extent: what lies past its end is lost. */
static void check_flat(struct img_check *res, const struct vmdk_extent *e, size_t index)
{
    if (e->file_size >= e->flat_off + e->len)
        return;
    img_check_report(res, "ERROR extent %zu: %s is %llu bytes, short of the %llu its extent "
                     "ends at", index, e->name, (unsigned long long)e->file_size,
                     (unsigned long long)(e->flat_off + e->len));
    res->corruptions++;
}

int vmdk_check(struct img *img, struct img_check *res, unsigned repair)
{
    struct vmdk *v = img->priv;
    if (repair)
        return img_error(img, ENOTSUP, "repairing a vmdk is not supported");
    for (size_t i = 0; i < v->n_ext; i++) {
        if (v->ext[i].type == VMDK_EXT_FLAT)
            check_flat(res, &v->ext[i], i);
        if (v->ext[i].type != VMDK_EXT_SPARSE || !v->ext[i].sp)
            continue;
        int r = check_sparse(img, res, v->ext[i].sp);
        if (r < 0)
            return r;
    }
    return 0;
}
