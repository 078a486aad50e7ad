/* commit: copy what the upper layers of a chain hold into a lower layer
 * (qemu-img commit), and the buffered writer that commit and rebase share. */
#ifndef IMGFS_COMMIT_H
#define IMGFS_COMMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "img.h"

struct img_copy_error {
    bool writing;              /* the written image failed (else a reader) */
    uint64_t offset;           /* guest byte where it happened */
    char msg[IMG_ERRMSG_MAX];
};

typedef void (*img_progress_fn)(void *ctx, uint64_t done, uint64_t total);

struct img_commit_opts {
    struct img *top;           /* the chain, as opened from the top */
    struct img *base_layer;    /* the layer of top's chain to commit into */
    struct img *base;          /* that same file opened read_write on its own */
    /* Then make top unallocated (qemu-img commit without -d); top must be
     * opened read_write and base_layer must be its own backing file. */
    bool empty_top;
    bool *top_kept;            /* set when empty_top but top's driver cannot
                                  discard: top keeps data equal to base's */
    img_progress_fn progress;
    void *progress_ctx;
};

/* Copy every range allocated above base_layer (DATA as data, ZERO and the
 * zeros past the end of a short layer as write_zeroes) into base, growing
 * base first when it is smaller than top, then flush base; then, with
 * empty_top, discard all of top and flush it.  0, or a negative errno with
 * `err` filled. */
int img_commit(const struct img_commit_opts *o, struct img_copy_error *err);

/* ---- a buffered writer: contiguous pieces become one large write ---- */

struct img_sink {
    struct img *dst;
    uint8_t *buf;
    size_t cap;
    uint64_t off, len;         /* the pending run */
    bool pending_zero;         /* the pending run is write_zeroes */
    bool may_unmap;            /* for write_zeroes */
    struct img_copy_error *err;
};

int img_sink_init(struct img_sink *s, struct img *dst, size_t cap, struct img_copy_error *err);
/* Append the bytes of a map extent (any kind; read now). */
int img_sink_extent(struct img_sink *s, const struct img_extent *ext);
/* Append plain bytes. */
int img_sink_bytes(struct img_sink *s, const void *buf, uint64_t off, size_t len);
/* Append a run that must read as zeros. */
int img_sink_zeroes(struct img_sink *s, uint64_t off, uint64_t len);
/* Write what is pending. */
int img_sink_flush(struct img_sink *s);
void img_sink_free(struct img_sink *s);

/* Fill `err` from an image's message (or strerror) and return r. */
int img_copy_fail(struct img_copy_error *err, bool writing, uint64_t off, struct img *img, int r);

#endif
