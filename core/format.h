/* The driver table: core/ reaches a format only through this. */
#ifndef IMGFS_FORMAT_H
#define IMGFS_FORMAT_H

#include "img.h"

/* One -o key=value option of create/convert, spelled as qemu-img does. */
struct img_kv {
    const char *key, *value;
};

struct img_create_opts {
    uint64_t size;               /* virtual size in bytes */
    const char *backing_file;    /* recorded as given, or NULL */
    const char *backing_fmt;     /* recorded backing format, or NULL */
    const struct img_kv *opts;   /* driver options: cluster_size, compat, ... */
    size_t n_opts;               /* an option the driver does not know is an
                                    error naming it */
};

/* One option a driver's create entry takes, described the way
 * `qemu-img create -f FMT -o help` lists it, so that imgctl can print the
 * list, refuse unknown keys and print qemu-img's "Formatting ..." line
 * without knowing any format. */
struct img_create_option {
    const char *name;    /* "cluster_size" */
    const char *type;    /* as -o help prints it: "size", "str", "num",
                            "bool (on/off)"; "size" values print in bytes */
    const char *help;    /* one line */
    const char *shown;   /* the value the Formatting line prints when the
                            user gave none; NULL = printed only when given */
};

/* Options of the host file itself (qemu's protocol level: nocow,
 * preallocation, extent_size_hint), which every format accepts after its
 * own.  NULL-name-terminated, in Formatting-line order.  A driver that
 * lists an option of the same name (qcow2's preallocation) takes it over. */
extern const struct img_create_option img_file_create_options[];

/* For a driver that gives the host file options no effect: 1 when `key` is
 * one of them with a valid value (nothing to do), 0 when it is not one of
 * them, -EINVAL for a preallocation mode that does not exist. */
int img_file_create_option(const char *key, const char *value);

/* Thread safety of the write entries: the core calls write, write_compressed,
 * write_zeroes and discard of one image from several threads at once (convert
 * compresses in parallel), so a driver serialises its metadata updates
 * itself and does its heavy work (compression) outside its lock. */

/* Results of a consistency check, with qemu-img check's meanings. */
struct img_check {
    uint64_t corruptions, leaks, check_errors;
    uint64_t corruptions_fixed, leaks_fixed;
    uint64_t image_end_offset;
    uint64_t total_clusters, allocated_clusters;
    uint64_t fragmented_clusters, compressed_clusters;
    /* One line per finding ("Leaked cluster 5 refcount=1 reference=0"). */
    void (*report)(void *ctx, const char *line);
    void *report_ctx;
};

/* Hand one finding, printf-style, to res->report (when set). */
void img_check_report(struct img_check *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define IMG_CHECK_REPAIR_LEAKS 1u
#define IMG_CHECK_REPAIR_ERRORS 2u

/* Format-specific facts for `info` ("format-specific"/"data" in qemu-img's
 * JSON).  Strings must live as long as the image. */
enum img_info_type { IMG_INFO_STR, IMG_INFO_INT, IMG_INFO_BOOL };
struct img_info_field {
    const char *key;             /* "compat", "refcount-bits", ... */
    enum img_info_type type;
    const char *str;
    int64_t num;                 /* INT value, or BOOL 0/1 */
};
#define IMG_INFO_MAX_FIELDS 32
struct img_info {
    bool has_dirty;              /* the format has a dirty flag */
    bool dirty;
    size_t n_fields;
    struct img_info_field fields[IMG_INFO_MAX_FIELDS];
};

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

    /* ---- optional entries, NULL = unsupported ---- */
    /* Format-specific facts for `info`. */
    int (*info)(struct img *img, struct img_info *info);
    /* Create an image file at `path` (created or truncated by the driver). */
    int (*create)(const char *path, const struct img_create_opts *o,
                  char *err, size_t errlen);
    /* The options create takes, NULL-name-terminated, listed in the order
     * qemu-img's "Formatting ..." line prints them.  NULL when create is. */
    const struct img_create_option *create_options;
    /* Write guest bytes to this layer (img opened read_write).  Partial
     * clusters are completed from the backing chain (copy-on-write). */
    int (*write)(struct img *img, const void *buf, size_t len, uint64_t off);
    /* Write one whole cluster compressed (convert -c); the last cluster may
     * be short at the end of the disk. */
    int (*write_compressed)(struct img *img, const void *buf, size_t len,
                            uint64_t off);
    /* Make [off, off+len) read as zeros in this layer; may_unmap lets the
     * driver free the clusters when that reads the same (no backing). */
    int (*write_zeroes)(struct img *img, uint64_t off, uint64_t len,
                        bool may_unmap);
    /* Make [off, off+len) unallocated in this layer, so that it reads from
     * the backing chain again (commit empties the top this way). */
    int (*discard)(struct img *img, uint64_t off, uint64_t len);
    /* Everything written so far is on stable storage when this returns. */
    int (*flush)(struct img *img);
    /* Record another backing file (rebase, commit); NULL file = none. */
    int (*set_backing)(struct img *img, const char *file, const char *fmt);
    int (*resize)(struct img *img, uint64_t new_size, bool shrink);
    /* Compare metadata with reality; `repair` is IMG_CHECK_REPAIR_*. */
    int (*check)(struct img *img, struct img_check *res, unsigned repair);
};

/* NULL-terminated, in probe order; defined in formats/registry.c. */
extern const struct img_format *const img_formats[];

const struct img_format *img_format_by_name(const char *name);

#endif
