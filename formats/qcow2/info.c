/* qcow2 facts for `imgctl info`, under qemu-img's JSON names and in its
 * order ("format-specific" -> "data"), so that scripts read both alike. */
#include "qcow2.h"

static void add_field(struct img_info *info, const char *key, enum img_info_type type,
                      const char *str, int64_t num)
{
    if (info->n_fields >= IMG_INFO_MAX_FIELDS)
        return;
    info->fields[info->n_fields++] = (struct img_info_field){
        .key = key, .type = type, .str = str, .num = num,
    };
}

int qcow2_info(struct img *img, struct img_info *info)
{
    const struct qcow2 *q = img->priv;
    const struct qcow2_header *h = &q->h;
    bool v3 = h->version >= 3;
    add_field(info, "compat", IMG_INFO_STR, v3 ? "1.1" : "0.10", 0);
    add_field(info, "compression-type", IMG_INFO_STR,
              h->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib", 0);
    if (v3)
        add_field(info, "lazy-refcounts", IMG_INFO_BOOL, NULL, h->compatible & 1);
    add_field(info, "refcount-bits", IMG_INFO_INT, NULL, 1ll << h->refcount_order);
    if (v3 && q->data_file_name) {
        add_field(info, "data-file", IMG_INFO_STR, q->data_file_name, 0);
        add_field(info, "data-file-raw", IMG_INFO_BOOL, NULL, q->raw_data_file);
    }
    if (v3) {
        add_field(info, "corrupt", IMG_INFO_BOOL, NULL,
                  (h->incompatible & QCOW2_INCOMPAT_CORRUPT) != 0);
        add_field(info, "extended-l2", IMG_INFO_BOOL, NULL, q->geom.extended_l2);
    }
    /* QEMU reports the flag for every qcow2; a v2 image is never dirty. */
    info->has_dirty = true;
    info->dirty = h->incompatible & QCOW2_INCOMPAT_DIRTY;
    return 0;
}
