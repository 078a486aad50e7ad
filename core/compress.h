/* Bounded decompression helpers shared by the drivers that store compressed
 * clusters or grains (qcow2, vmdk, ...).  The output never grows past the
 * caller's buffer, and input after the end of the stream is ignored: formats
 * round compressed sizes up to whole sectors, so trailing bytes are normal. */
#ifndef IMGFS_COMPRESS_H
#define IMGFS_COMPRESS_H

#include <stddef.h>
#include <sys/types.h>

enum decompress_kind {
    DECOMPRESS_DEFLATE_RAW, /* raw deflate, no header, 4 KiB window (qcow2 zlib) */
    DECOMPRESS_ZLIB,        /* deflate with zlib header (vmdk stream-optimized) */
    DECOMPRESS_ZSTD,        /* one zstd frame (qcow2 compression_type 1) */
};

/* Decompress `in` into `out`, producing at most `out_len` bytes.
 * Returns the number of bytes produced (fewer than out_len when the stream
 * ends early or the input is cut short), or
 *   -EIO       the stream is corrupt,
 *   -EOVERFLOW the stream holds more than out_len bytes,
 *   -ENOMEM    no memory for the decoder,
 *   -EINVAL    sizes the decoder cannot take. */
ssize_t decompress_bounded(enum decompress_kind kind, const void *in, size_t in_len,
                           void *out, size_t out_len);

/* Compress `in` into at most `out_cap` bytes of `out` as one complete stream
 * of `kind` (DECOMPRESS_DEFLATE_RAW: raw deflate with a 4 KiB window, as QEMU
 * writes qcow2 clusters; DECOMPRESS_ZSTD: one zstd frame).  Returns the
 * stream's length, -ENOSPC when it does not fit in out_cap (the caller then
 * stores the data uncompressed), -ENOMEM, or -EINVAL for sizes or kinds the
 * encoder cannot take. */
ssize_t compress_bounded(enum decompress_kind kind, const void *in, size_t in_len,
                         void *out, size_t out_cap);

/* "zlib", "zstd", ... for messages. */
const char *decompress_kind_name(enum decompress_kind kind);

#endif
