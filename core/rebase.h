/* rebase: give an image another backing file while it keeps reading the
 * same (qemu-img rebase, safe mode). */
#ifndef IMGFS_REBASE_H
#define IMGFS_REBASE_H

#include "commit.h"

struct img_rebase_opts {
    struct img *file;          /* opened read_write with its old chain */
    struct img *new_backing;   /* the new chain, opened; NULL = no backing */
    const char *backing_name;  /* recorded as given; NULL = none */
    const char *backing_fmt;   /* recorded; may be NULL */
    img_progress_fn progress;
    void *progress_ctx;
};

/* Where `file` does not hold a range itself and the old chain reads
 * otherwise than the new backing, write the old chain's bytes into `file`;
 * then record the new backing and flush.  0, or a negative errno with `err`
 * filled. */
int img_rebase(const struct img_rebase_opts *o, struct img_copy_error *err);

#endif
