/* String parsers shared by imgctl and the drivers: qemu-img's sizes ("10G",
 * "1.5G", "64k") and the pieces of -o option lists.  Pure functions: no
 * allocation, no output, so that drivers, the daemon and unit tests can all
 * use them. */
#ifndef IMGFS_PARSE_H
#define IMGFS_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "4096", "10G", "512M", "1.5G", "64k", "2b": a decimal number (fraction
 * allowed with a suffix) times a power-of-1024 suffix b/B k/K m/M g/G t/T p/P
 * e/E.  Whitespace, signs and trailing junk are refused.  Returns 0,
 * -EINVAL when `s` is not a size, -ERANGE when it is 2^63 bytes or more (the
 * largest size qemu-img accepts is below 8 EiB) or a fraction of a byte. */
int img_parse_size(const char *s, uint64_t *bytes);

/* resize's argument: absolute, "+SIZE" or "-SIZE". */
enum img_size_mode { IMG_SIZE_ABSOLUTE, IMG_SIZE_GROW, IMG_SIZE_SHRINK };
struct img_size_delta {
    enum img_size_mode mode;
    uint64_t bytes;
};
int img_parse_size_delta(const char *s, struct img_size_delta *d);

/* Split one -o list "k=v,k2=v2" in place: `buf` is modified (",," collapses
 * to ","), and for each option `cb(key, value, ctx)` is called with a bare
 * "key" given as value "on".  Returns 0, -EINVAL on an empty key (the
 * callback is not called for the rest), or the first non-zero callback
 * result. */
int img_split_options(char *buf,
                      int (*cb)(const char *key, const char *value, void *ctx),
                      void *ctx);

/* Parse a boolean option value as qemu does: on/off, yes/no, true/false. */
int img_parse_bool(const char *s, bool *out);

#endif
