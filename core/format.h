/* The driver table: core/ reaches a format only through this. */
#ifndef IMGFS_FORMAT_H
#define IMGFS_FORMAT_H

#include "img.h"

struct img_format {
    const char *name;   /* "qcow2", as qemu-img names it */
    /* How sure is the driver that these first bytes are its format: 0..100.
     * `filename` may be used as a weak hint (raw suffixes). */
    int (*probe)(const uint8_t *head, size_t len, const char *filename);
    /* Parse and validate the headers, set img->size, img->cluster_size,
     * img->backing_file / backing_fmt and img->priv. */
    int (*open)(struct img *img, const struct img_open_opts *o);
    void (*close)(struct img *img);
    /* The first extent of [off, off+len) in this layer only (off + len <=
     * img->size).  ext->len must be > 0 and <= len.  UNALLOCATED means "ask
     * the backing layer".  Must not read data, only tables. */
    int (*map)(struct img *img, uint64_t off, uint64_t len,
               struct img_extent *ext);
    /* Read a DATA range that has no plain host bytes (compressed,
     * encrypted); [off, off+len) lies within one extent from map(). */
    int (*read)(struct img *img, void *buf, size_t len, uint64_t off);
    /* Optional entries, NULL = unsupported. */
    int (*write)(struct img *img, const void *buf, size_t len, uint64_t off);
    int (*flush)(struct img *img);
};

/* NULL-terminated, in probe order; defined in formats/registry.c. */
extern const struct img_format *const img_formats[];

const struct img_format *img_format_by_name(const char *name);

#endif
