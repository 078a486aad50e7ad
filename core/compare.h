/* Compare the guest contents of two image chains, as qemu-img compare: the
 * maps decide what must be read; two holes are never read. */
#ifndef IMGFS_COMPARE_H
#define IMGFS_COMPARE_H

#include <stdbool.h>
#include <stdint.h>

#include "img.h"

enum img_compare_verdict {
    IMG_COMPARE_IDENTICAL,
    IMG_COMPARE_CONTENT,      /* bytes differ at `offset` */
    IMG_COMPARE_SIZE,         /* strict: the virtual sizes differ */
    IMG_COMPARE_STATUS,       /* strict: allocation differs at `offset` */
};

/* Where the comparison failed: qemu-img compare exits 3 for a map error and
 * 4 for a read error. */
enum img_compare_stage { IMG_COMPARE_MAP, IMG_COMPARE_READ };

struct img_compare_opts {
    bool strict;              /* sizes and allocation must match too */
    /* Called now and then with the guest bytes done; may be NULL. */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
};

struct img_compare_result {
    enum img_compare_verdict verdict;
    uint64_t offset;          /* first differing 512-byte sector */
    bool size_mismatch;       /* sizes differ (the tail was checked for zeros) */
    /* On error: */
    struct img *failed;       /* the image whose errmsg says why */
    enum img_compare_stage stage;
};

/* 0 with `res` filled, or a negative errno with res->failed / res->stage
 * set (and the message on res->failed). */
int img_compare(struct img *a, struct img *b, const struct img_compare_opts *o,
                struct img_compare_result *res);

#endif
