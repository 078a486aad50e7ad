/* Bounded compression and decompression: zlib (raw deflate or with header)
 * and zstd.  Every
 * decoder writes into the caller's buffer only, and an attempt by the stream
 * to produce even one byte more is reported, so that a hostile image can
 * neither overrun a cluster buffer nor make us spin. */
#include "compress.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

const char *decompress_kind_name(enum decompress_kind kind)
{
    switch (kind) {
    case DECOMPRESS_DEFLATE_RAW:
    case DECOMPRESS_ZLIB:
        return "zlib";
    case DECOMPRESS_ZSTD:
        return "zstd";
    }
    return "unknown";
}

/* The output is full: does the stream still hold data?  One spare byte of
 * room tells; reaching the end marker instead means the size was exact. */
static ssize_t inflate_check_end(z_stream *zs, size_t out_len)
{
    uint8_t spare;
    zs->next_out = &spare;
    zs->avail_out = 1;
    int r = inflate(zs, Z_FINISH);
    if (zs->avail_out == 0)
        return -EOVERFLOW;
    if (r == Z_DATA_ERROR || r == Z_NEED_DICT || r == Z_STREAM_ERROR)
        return -EIO;
    /* Z_STREAM_END, or the input ends right after the last byte we need:
     * either way nothing more can come out. */
    return (ssize_t)out_len;
}

static ssize_t inflate_bounded(int window_bits, const void *in, size_t in_len,
                               void *out, size_t out_len)
{
    if (in_len > UINT_MAX || out_len > UINT_MAX || out_len > SSIZE_MAX)
        return -EINVAL;
    z_stream zs = { 0 };
    zs.next_in = (Bytef *)in;   /* zlib's API is not const-correct */
    zs.avail_in = (uInt)in_len;
    zs.next_out = out;
    zs.avail_out = (uInt)out_len;
    int r = inflateInit2(&zs, window_bits);
    if (r != Z_OK)
        return r == Z_MEM_ERROR ? -ENOMEM : -EIO;

    ssize_t ret;
    r = inflate(&zs, Z_FINISH);
    size_t produced = out_len - zs.avail_out;
    if (r == Z_STREAM_END)
        ret = (ssize_t)produced;
    else if (r == Z_MEM_ERROR)
        ret = -ENOMEM;
    else if (r != Z_OK && r != Z_BUF_ERROR)
        ret = -EIO;             /* Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR */
    else if (zs.avail_out == 0)
        ret = inflate_check_end(&zs, out_len);
    else
        ret = (ssize_t)produced; /* input cut short before the end marker */
    inflateEnd(&zs);
    return ret;
}

/* Same question as inflate_check_end, for zstd. */
static ssize_t zstd_check_end(ZSTD_DCtx *dctx, ZSTD_inBuffer *ib, size_t out_len)
{
    uint8_t spare;
    for (;;) {
        ZSTD_outBuffer sp = { &spare, 1, 0 };
        size_t before = ib->pos;
        size_t r = ZSTD_decompressStream(dctx, &sp, ib);
        if (ZSTD_isError(r))
            return -EIO;
        if (sp.pos > 0)
            return -EOVERFLOW;
        if (r == 0 || ib->pos == before)
            return (ssize_t)out_len;   /* frame ended, or no more input */
    }
}

static ssize_t zstd_bounded(const void *in, size_t in_len, void *out, size_t out_len)
{
    if (out_len > SSIZE_MAX)
        return -EINVAL;
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx)
        return -ENOMEM;
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_len, 0 };
    ssize_t ret;
    for (;;) {
        size_t in_before = ib.pos, out_before = ob.pos;
        size_t r = ZSTD_decompressStream(dctx, &ob, &ib);
        if (ZSTD_isError(r)) {
            ret = -EIO;
            break;
        }
        if (r == 0) {            /* one frame, fully decoded: stop there */
            ret = (ssize_t)ob.pos;
            break;
        }
        if (ob.pos == ob.size) {
            ret = zstd_check_end(dctx, &ib, out_len);
            break;
        }
        if (ib.pos == in_before && ob.pos == out_before) {
            ret = (ssize_t)ob.pos;   /* input cut short mid-frame */
            break;
        }
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

ssize_t decompress_bounded(enum decompress_kind kind, const void *in, size_t in_len,
                           void *out, size_t out_len)
{
    switch (kind) {
    case DECOMPRESS_DEFLATE_RAW:
        /* qcow2 writers deflate with a 4 KiB window (windowBits -12) and
         * QEMU inflates with the same.  Since the whole output is one
         * buffer, zlib still follows distances past 4 KiB, as QEMU does. */
        return inflate_bounded(-12, in, in_len, out, out_len);
    case DECOMPRESS_ZLIB:
        return inflate_bounded(MAX_WBITS, in, in_len, out, out_len);
    case DECOMPRESS_ZSTD:
        return zstd_bounded(in, in_len, out, out_len);
    }
    return -EINVAL;
}

/* ---- compression ---- */

static ssize_t deflate_bounded(int window_bits, const void *in, size_t in_len,
                               void *out, size_t out_cap)
{
    if (in_len > UINT_MAX || out_cap > UINT_MAX)
        return -EINVAL;
    z_stream zs = { 0 };
    /* memLevel 9 and the default level: what QEMU uses for qcow2 clusters. */
    int r = deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window_bits, 9,
                         Z_DEFAULT_STRATEGY);
    if (r != Z_OK)
        return r == Z_MEM_ERROR ? -ENOMEM : -EINVAL;
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)in_len;
    zs.next_out = out;
    zs.avail_out = (uInt)out_cap;
    r = deflate(&zs, Z_FINISH);
    ssize_t ret = r == Z_STREAM_END ? (ssize_t)(out_cap - zs.avail_out)
                : r == Z_OK || r == Z_BUF_ERROR ? -ENOSPC : -EINVAL;
    deflateEnd(&zs);
    return ret;
}

static ssize_t zstd_compress_bounded(const void *in, size_t in_len, void *out, size_t out_cap)
{
    /* ZSTD_compress stops with dstSize_tooSmall instead of writing past
     * out_cap, so a tight buffer is safe and tells "does not shrink". */
    size_t n = ZSTD_compress(out, out_cap, in, in_len, ZSTD_CLEVEL_DEFAULT);
    if (!ZSTD_isError(n))
        return n > SSIZE_MAX ? -EINVAL : (ssize_t)n;
    switch (ZSTD_getErrorCode(n)) {
    case ZSTD_error_dstSize_tooSmall: return -ENOSPC;
    case ZSTD_error_memory_allocation: return -ENOMEM;
    default: return -EINVAL;
    }
}

ssize_t compress_bounded(enum decompress_kind kind, const void *in, size_t in_len,
                         void *out, size_t out_cap)
{
    switch (kind) {
    case DECOMPRESS_DEFLATE_RAW:
        return deflate_bounded(-12, in, in_len, out, out_cap);
    case DECOMPRESS_ZLIB:
        return deflate_bounded(MAX_WBITS, in, in_len, out, out_cap);
    case DECOMPRESS_ZSTD:
        return zstd_compress_bounded(in, in_len, out, out_cap);
    }
    return -EINVAL;
}
