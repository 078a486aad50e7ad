/* qemu-img compare's algorithm over our chain maps. */
#include "core/compare.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CMP_CHUNK (1u << 20)     /* bytes read at once from each side */
#define CMP_SECTOR 512u          /* mismatches are reported per sector */

struct cmp {
    struct img *a, *b;
    const struct img_compare_opts *o;
    struct img_compare_result *res;
    uint8_t *buf_a, *buf_b;
    uint64_t total;
};

static uint64_t min_u64(uint64_t x, uint64_t y) { return x < y ? x : y; }

static int fail(struct cmp *c, struct img *img, enum img_compare_stage stage, int r)
{
    c->res->failed = img;
    c->res->stage = stage;
    return r < 0 ? r : -EIO;
}

/* Index of the first sector of `buf` that is not all zero, or -1. */
static int64_t first_nonzero_sector(const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i])
            return (int64_t)(i - i % CMP_SECTOR);
    return -1;
}

static int64_t first_difference_sector(const uint8_t *x, const uint8_t *y, size_t len)
{
    if (memcmp(x, y, len) == 0)
        return -1;
    size_t i = 0;
    while (x[i] == y[i])
        i++;
    return (int64_t)(i - i % CMP_SECTOR);
}

static void mismatch(struct cmp *c, enum img_compare_verdict v, uint64_t offset)
{
    c->res->verdict = v;
    c->res->offset = offset;
}

/* [off, off+len) is DATA in `img` and zeros on the other side. */
static int check_zero(struct cmp *c, struct img *img, uint64_t off, uint64_t len)
{
    int r = img_read(img, c->buf_a, len, off);
    if (r < 0)
        return fail(c, img, IMG_COMPARE_READ, r);
    int64_t at = first_nonzero_sector(c->buf_a, len);
    if (at >= 0)
        mismatch(c, IMG_COMPARE_CONTENT, off + (uint64_t)at);
    return 0;
}

static int check_both(struct cmp *c, uint64_t off, uint64_t len)
{
    int r = img_read(c->a, c->buf_a, len, off);
    if (r < 0)
        return fail(c, c->a, IMG_COMPARE_READ, r);
    r = img_read(c->b, c->buf_b, len, off);
    if (r < 0)
        return fail(c, c->b, IMG_COMPARE_READ, r);
    int64_t at = first_difference_sector(c->buf_a, c->buf_b, len);
    if (at >= 0)
        mismatch(c, IMG_COMPARE_CONTENT, off + (uint64_t)at);
    return 0;
}

/* Compare one step of the common part; *len gets how far it went. */
static int compare_step(struct cmp *c, uint64_t off, uint64_t end, uint64_t *len)
{
    struct img_extent xa, xb;
    int r = img_map(c->a, off, end - off, &xa);
    if (r < 0)
        return fail(c, c->a, IMG_COMPARE_MAP, r);
    r = img_map(c->b, off, end - off, &xb);
    if (r < 0)
        return fail(c, c->b, IMG_COMPARE_MAP, r);
    *len = min_u64(min_u64(xa.len, xb.len), CMP_CHUNK);
    bool present_a = xa.kind != IMG_UNALLOCATED, present_b = xb.kind != IMG_UNALLOCATED;
    if (c->o->strict && (xa.kind != xb.kind || present_a != present_b)) {
        mismatch(c, IMG_COMPARE_STATUS, off);
        return 0;
    }
    bool data_a = xa.kind == IMG_DATA, data_b = xb.kind == IMG_DATA;
    if (data_a && data_b)
        return check_both(c, off, *len);
    if (data_a)
        return check_zero(c, c->a, off, *len);
    if (data_b)
        return check_zero(c, c->b, off, *len);
    return 0;   /* two holes: nothing to read */
}

/* The part of the larger image beyond the smaller one must read as zeros. */
static int compare_tail(struct cmp *c, struct img *big, uint64_t off)
{
    while (off < big->size && c->res->verdict == IMG_COMPARE_IDENTICAL) {
        struct img_extent x;
        int r = img_map(big, off, big->size - off, &x);
        if (r < 0)
            return fail(c, big, IMG_COMPARE_MAP, r);
        uint64_t len = min_u64(x.len, CMP_CHUNK);
        if (x.kind == IMG_DATA && (r = check_zero(c, big, off, len)) < 0)
            return r;
        off += len;
        if (c->o->progress)
            c->o->progress(c->o->progress_ctx, off, c->total);
    }
    return 0;
}

static int run(struct cmp *c)
{
    uint64_t common = min_u64(c->a->size, c->b->size);
    if (c->a->size != c->b->size) {
        c->res->size_mismatch = true;
        if (c->o->strict) {
            mismatch(c, IMG_COMPARE_SIZE, common);
            return 0;
        }
    }
    for (uint64_t off = 0, len; off < common; off += len) {
        int r = compare_step(c, off, common, &len);
        if (r < 0 || c->res->verdict != IMG_COMPARE_IDENTICAL)
            return r;
        if (c->o->progress)
            c->o->progress(c->o->progress_ctx, off + len, c->total);
    }
    struct img *big = c->a->size > c->b->size ? c->a : c->b;
    return compare_tail(c, big, common);
}

int img_compare(struct img *a, struct img *b, const struct img_compare_opts *o,
                struct img_compare_result *res)
{
    static const struct img_compare_opts defaults;
    memset(res, 0, sizeof(*res));
    struct cmp c = { .a = a, .b = b, .o = o ? o : &defaults, .res = res,
                     .total = a->size > b->size ? a->size : b->size };
    c.buf_a = malloc(CMP_CHUNK);
    c.buf_b = malloc(CMP_CHUNK);
    int r;
    if (!c.buf_a || !c.buf_b) {
        r = fail(&c, a, IMG_COMPARE_READ, -ENOMEM);
        img_error(a, ENOMEM, "out of memory for the compare buffers");
    } else {
        r = run(&c);
    }
    free(c.buf_a);
    free(c.buf_b);
    return r;
}
