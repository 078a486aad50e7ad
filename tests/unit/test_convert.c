/* core/convert: the planner's decisions seen through raw files: zero runs in
 * data become holes only when at least -S long, -S 0 writes them, an
 * existing destination gets its holes zeroed, sources are concatenated at
 * any size, and the zero test itself. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/convert.h"
#include "core/format.h"
#include "core/img.h"

#define K 1024

static char dir[] = "/tmp/test_convert.XXXXXX";

static void setup(void)
{
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

static char *path_of(const char *name)
{
    static char buf[4][256];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
    return buf[i];
}

/* A raw file of `size` bytes with `fill` written at [off, off+len) pieces. */
static void make_raw(const char *name, uint64_t size, const uint64_t (*pieces)[3], size_t n)
{
    int fd = open(path_of(name), O_CREAT | O_TRUNC | O_RDWR, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    for (size_t i = 0; i < n; i++) {
        uint8_t *b = malloc(pieces[i][1]);
        memset(b, (int)pieces[i][2], pieces[i][1]);
        cr_assert_eq(pwrite(fd, b, pieces[i][1], (off_t)pieces[i][0]), (ssize_t)pieces[i][1]);
        free(b);
    }
    close(fd);
}

static struct img *open_raw(const char *name, bool rw)
{
    struct img_open_opts o = { .format = "raw", .read_write = rw, .force_share = true };
    struct img *img;
    char err[IMG_ERRMSG_MAX];
    cr_assert_eq(img_open(path_of(name), &o, &img, err, sizeof(err)), 0, "%s", err);
    return img;
}

static void convert(struct img **srcs, size_t n, struct img *dst, bool fresh, uint64_t sparse)
{
    struct img_convert_opts o = { .srcs = srcs, .n_srcs = n, .dst = dst, .dst_is_new = fresh,
                                  .sparse_size = sparse, .granule = 512 };
    struct img_convert_error err;
    cr_assert_eq(img_convert(&o, &err), 0, "%s", err.msg);
}

static bool is_hole(const char *name, uint64_t off, uint64_t len)
{
    int fd = open(path_of(name), O_RDONLY);
    off_t data = lseek(fd, (off_t)off, SEEK_DATA);
    close(fd);
    return data < 0 || (uint64_t)data >= off + len;
}

static void expect_bytes(const char *name, uint64_t off, uint64_t len, uint8_t val)
{
    int fd = open(path_of(name), O_RDONLY);
    uint8_t *b = malloc(len);
    cr_assert_eq(pread(fd, b, len, (off_t)off), (ssize_t)len);
    for (uint64_t i = 0; i < len; i++)
        cr_assert_eq(b[i], val, "%s byte %llu is 0x%x, want 0x%x", name,
                     (unsigned long long)(off + i), b[i], val);
    free(b);
    close(fd);
}

TestSuite(convert, .init = setup, .fini = teardown);

/* 64 KiB of 0x11, 64 KiB of written zero bytes, 64 KiB of 0x22. */
static const uint64_t zero_run_pieces[][3] = {
    { 0, 64 * K, 0x11 }, { 64 * K, 64 * K, 0 }, { 128 * K, 64 * K, 0x22 },
};

Test(convert, zero_run_in_data_becomes_a_hole)
{
    make_raw("src", 256 * K, zero_run_pieces, 3);
    make_raw("dst", 256 * K, NULL, 0);
    struct img *src = open_raw("src", false), *dst = open_raw("dst", true);
    convert(&src, 1, dst, true, 4096);
    img_close(src);
    img_close(dst);
    expect_bytes("dst", 0, 64 * K, 0x11);
    expect_bytes("dst", 128 * K, 64 * K, 0x22);
    cr_assert(is_hole("dst", 64 * K, 64 * K));
    cr_assert(!is_hole("dst", 0, 4 * K));
}

Test(convert, sparse_zero_writes_zero_data)
{
    make_raw("src", 256 * K, zero_run_pieces, 3);
    make_raw("dst", 256 * K, NULL, 0);
    struct img *src = open_raw("src", false), *dst = open_raw("dst", true);
    convert(&src, 1, dst, true, 0);
    img_close(src);
    img_close(dst);
    cr_assert(!is_hole("dst", 64 * K, 64 * K));
    expect_bytes("dst", 64 * K, 64 * K, 0);
}

Test(convert, short_zero_run_is_written)
{
    /* 2 KiB of zeros between data: shorter than -S 4k, so written. */
    static const uint64_t p[][3] = { { 0, 10 * K, 0x33 }, { 10 * K, 2 * K, 0 }, { 12 * K, 4 * K, 0x44 } };
    make_raw("src", 64 * K, p, 3);
    make_raw("dst", 64 * K, NULL, 0);
    struct img *src = open_raw("src", false), *dst = open_raw("dst", true);
    convert(&src, 1, dst, true, 4096);
    img_close(src);
    img_close(dst);
    expect_bytes("dst", 0, 10 * K, 0x33);
    expect_bytes("dst", 10 * K, 2 * K, 0);
    expect_bytes("dst", 12 * K, 4 * K, 0x44);
    cr_assert(is_hole("dst", 16 * K, 48 * K));
}

Test(convert, existing_destination_gets_zeros_in_holes)
{
    static const uint64_t src_p[][3] = { { 8 * K, 8 * K, 0x55 } };
    static const uint64_t dst_p[][3] = { { 0, 5 * 1024 * K, 0xee } };
    make_raw("src", 5 * 1024 * K, src_p, 1);
    make_raw("dst", 5 * 1024 * K, dst_p, 1);
    struct img *src = open_raw("src", false), *dst = open_raw("dst", true);
    convert(&src, 1, dst, false, 4096);
    img_close(src);
    img_close(dst);
    expect_bytes("dst", 0, 8 * K, 0);
    expect_bytes("dst", 8 * K, 8 * K, 0x55);
    expect_bytes("dst", 16 * K, 5 * 1024 * K - 16 * K, 0);
}

Test(convert, sources_of_odd_sizes_are_concatenated)
{
    static const uint64_t a_p[][3] = { { 0, 3000, 0x61 } };
    static const uint64_t b_p[][3] = { { 0, 5000, 0x62 } };
    make_raw("a", 3000, a_p, 1);
    make_raw("b", 5000, b_p, 1);
    make_raw("dst", 8000, NULL, 0);
    struct img *srcs[2] = { open_raw("a", false), open_raw("b", false) };
    struct img *dst = open_raw("dst", true);
    convert(srcs, 2, dst, true, 4096);
    img_close(srcs[0]);
    img_close(srcs[1]);
    img_close(dst);
    expect_bytes("dst", 0, 3000, 0x61);
    expect_bytes("dst", 3000, 5000, 0x62);
}

Test(convert, destination_too_small_is_refused)
{
    make_raw("src", 64 * K, zero_run_pieces, 1);
    make_raw("dst", 32 * K, NULL, 0);
    struct img *src = open_raw("src", false), *dst = open_raw("dst", true);
    struct img_convert_opts o = { .srcs = &src, .n_srcs = 1, .dst = dst, .dst_is_new = true,
                                  .sparse_size = 4096, .granule = 512 };
    struct img_convert_error err;
    cr_assert_lt(img_convert(&o, &err), 0);
    cr_assert(strstr(err.msg, "smaller") != NULL, "%s", err.msg);
    img_close(src);
    img_close(dst);
}

Test(convert_zero, buffers)
{
    static uint8_t b[8192];
    cr_assert(img_buf_is_zero(b, 0));
    cr_assert(img_buf_is_zero(b, 7));
    cr_assert(img_buf_is_zero(b, sizeof(b)));
    b[5] = 1;
    cr_assert(!img_buf_is_zero(b, sizeof(b)));
    cr_assert(img_buf_is_zero(b + 6, sizeof(b) - 6));
    b[5] = 0;
    b[8191] = 1;
    cr_assert(!img_buf_is_zero(b, sizeof(b)));
    b[8191] = 0;
}
