/* core/compress: bounded decompression of raw deflate, zlib and zstd.  The
 * streams are made here with zlib's and zstd's own compressors. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "core/compress.h"

/* Text that compresses well and is not all one byte. */
static uint8_t *make_plain(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len);
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)("qcow2 cluster "[i % 14] + (i / 4096 + seed) % 3);
    return p;
}

static size_t deflate_with(int window_bits, const uint8_t *in, size_t len, uint8_t *out,
                           size_t cap)
{
    z_stream zs = { 0 };
    cr_assert_eq(deflateInit2(&zs, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    cr_assert_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
    size_t n = cap - zs.avail_out;
    deflateEnd(&zs);
    return n;
}

static size_t compress_as(enum decompress_kind kind, const uint8_t *in, size_t len,
                          uint8_t *out, size_t cap)
{
    switch (kind) {
    case DECOMPRESS_DEFLATE_RAW: return deflate_with(-12, in, len, out, cap);
    case DECOMPRESS_ZLIB: return deflate_with(15, in, len, out, cap);
    case DECOMPRESS_ZSTD: {
        size_t n = ZSTD_compress(out, cap, in, len, 3);
        cr_assert(!ZSTD_isError(n));
        return n;
    }
    }
    return 0;
}

static const enum decompress_kind kinds[] = {
    DECOMPRESS_DEFLATE_RAW, DECOMPRESS_ZLIB, DECOMPRESS_ZSTD,
};

#define N 65536

Test(compress, exact_fit_round_trip_with_trailing_junk)
{
    uint8_t *plain = make_plain(N, 0), *z = malloc(2 * N), *out = malloc(N);
    for (size_t k = 0; k < 3; k++) {
        size_t zl = compress_as(kinds[k], plain, N, z, 2 * N);
        /* Sector rounding leaves bytes after the stream: they must not matter. */
        memset(z + zl, 0xa5, 700);
        ssize_t got = decompress_bounded(kinds[k], z, zl + 700, out, N);
        cr_assert_eq(got, N, "%s: %zd", decompress_kind_name(kinds[k]), got);
        cr_assert_arr_eq(out, plain, N);
    }
    free(plain);
    free(z);
    free(out);
}

Test(compress, longer_stream_is_overflow)
{
    uint8_t *plain = make_plain(2 * N, 1), *z = malloc(4 * N), *out = malloc(N + 16);
    for (size_t k = 0; k < 3; k++) {
        size_t zl = compress_as(kinds[k], plain, N + 1, z, 4 * N);
        memset(out + N, 0x5c, 16);
        cr_assert_eq(decompress_bounded(kinds[k], z, zl, out, N), -EOVERFLOW, "%s",
                     decompress_kind_name(kinds[k]));
        for (int i = 0; i < 16; i++)
            cr_assert_eq(out[N + i], 0x5c, "wrote past the buffer");
    }
    free(plain);
    free(z);
    free(out);
}

Test(compress, shorter_or_truncated_stream_reports_its_size)
{
    uint8_t *plain = make_plain(N, 2), *z = malloc(2 * N), *out = malloc(N);
    for (size_t k = 0; k < 3; k++) {
        size_t zl = compress_as(kinds[k], plain, N / 2, z, 2 * N);
        cr_assert_eq(decompress_bounded(kinds[k], z, zl, out, N), N / 2);
        zl = compress_as(kinds[k], plain, N, z, 2 * N);
        ssize_t got = decompress_bounded(kinds[k], z, zl / 2, out, N);
        cr_assert(got >= 0 && got < N, "%s: cut stream gave %zd",
                  decompress_kind_name(kinds[k]), got);
        cr_assert_eq(decompress_bounded(kinds[k], z, 0, out, N), 0);
    }
    free(plain);
    free(z);
    free(out);
}

Test(compress, garbage_is_eio)
{
    uint8_t junk[512], out[4096];
    memset(junk, 0xff, sizeof(junk));   /* deflate block type 3 is reserved */
    for (size_t k = 0; k < 3; k++)
        cr_assert_eq(decompress_bounded(kinds[k], junk, sizeof(junk), out, sizeof(out)), -EIO,
                     "%s", decompress_kind_name(kinds[k]));
}

/* qcow2 writers use a 4 KiB window, but a stream reaching further back
 * still inflates: the whole cluster is one output buffer (QEMU reads such
 * streams too). */
Test(compress, raw_deflate_wider_window_still_reads)
{
    uint8_t *plain = malloc(N), *z = malloc(2 * N), *out = malloc(N);
    srand(7);
    for (size_t i = 0; i < N / 2; i++)
        plain[i] = (uint8_t)rand();
    memcpy(plain + N / 2, plain, N / 2);   /* repeats 32 KiB back */
    size_t zl = deflate_with(-15, plain, N, z, 2 * N);
    cr_assert_eq(decompress_bounded(DECOMPRESS_DEFLATE_RAW, z, zl, out, N), N);
    cr_assert_arr_eq(out, plain, N);
    free(plain);
    free(z);
    free(out);
}

/* Flipped bytes must give an error or some bounded output, never a crash
 * (ASan watches the buffers). */
Test(compress, mutated_streams_stay_bounded)
{
    uint8_t *plain = make_plain(N, 3), *z = malloc(2 * N), *m = malloc(2 * N);
    uint8_t *out = malloc(N);
    srand(11);
    for (size_t k = 0; k < 3; k++) {
        size_t zl = compress_as(kinds[k], plain, N, z, 2 * N);
        for (int round = 0; round < 200; round++) {
            memcpy(m, z, zl);
            for (int f = 0; f < 3; f++)
                m[(size_t)rand() % zl] ^= (uint8_t)(1u << (rand() % 8));
            ssize_t got = decompress_bounded(kinds[k], m, zl, out, N);
            cr_assert(got == -EIO || got == -EOVERFLOW || (got >= 0 && got <= N),
                      "%s gave %zd", decompress_kind_name(kinds[k]), got);
        }
    }
    free(plain);
    free(z);
    free(m);
    free(out);
}
