/* Converting images: copy what the map of one or more source chains says is
 * there into a destination through its driver's write entries.  Knows no
 * format: raw, qcow2 and later writers all go through struct img_format.
 * Lives in core/ so that the daemon can run the same operation. */
#ifndef IMGFS_CONVERT_H
#define IMGFS_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "img.h"

/* Default -S: runs of zeros inside data at least this long become holes. */
#define IMG_CONVERT_DEFAULT_SPARSE 4096
/* Bytes read from the sources and handed to the writers at a time. */
#define IMG_CONVERT_WINDOW (4u << 20)

struct img_convert_opts {
    struct img *const *srcs;   /* opened source chains, concatenated in order */
    size_t n_srcs;
    struct img *dst;           /* opened read_write (with its chain when it has a
                                  backing file); dst->size >= sum of the sources */
    bool dst_is_new;           /* freshly created: unwritten ranges read as zeros
                                  (or as dst->backing); false with -n */
    bool compress;             /* write_compressed, one dst cluster at a time */
    bool compare_backing;      /* -B: dst->backing is the new backing; write only
                                  what differs from it */
    uint64_t sparse_size;      /* -S: zero runs in data at least this long are
                                  not written; 0 writes data as read */
    uint32_t granule;          /* unit of the keep/skip decisions: the dst
                                  cluster, or 512 for a plain file; a power of
                                  two; with compress it must be the cluster */
    unsigned threads;          /* writer threads; 0 = a default */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
};

struct img_convert_error {
    bool writing;              /* the destination failed (else a source) */
    uint64_t offset;           /* destination byte where it happened */
    char msg[IMG_ERRMSG_MAX];  /* the fault, naming the file when known */
};

/* Copy, then flush the destination.  0, or a negative errno with `err`
 * filled. */
int img_convert(const struct img_convert_opts *o, struct img_convert_error *err);

/* ---- pieces shared with commit and rebase ---- */

/* Do two map answers point at the same stored bytes: DATA in the same layer
 * file at the same guest offset?  Then comparing needs no read. */
bool img_extents_same_bytes(const struct img_extent *a, const struct img_extent *b);

/* All-zero bytes? */
bool img_buf_is_zero(const void *buf, size_t len);

/* What the chain reads at [off, off+len), zeros past its end (a backing file
 * shorter than its overlay).  The message is left on `img`. */
int img_read_padded(struct img *img, void *buf, size_t len, uint64_t off);

/* The first extent of [off, off+len) like img_map, but past the chain's end
 * an UNALLOCATED extent (reads as zeros) instead of an error. */
int img_map_padded(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext);

/* Narrow an extent from img_map to [off, off+len) inside it. */
void img_extent_clip(struct img_extent *ext, uint64_t off, uint64_t len);

#endif
