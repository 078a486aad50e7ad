/* The body of every libFuzzer target: one input, one format, bounded work,
 * and two faults a sanitizer cannot see on its own turned into crashes:
 * a failure without a usable message, and a leaked file descriptor. */
#ifndef IMGFS_FUZZ_TARGET_H
#define IMGFS_FUZZ_TARGET_H

#include <stdio.h>
#include <stdlib.h>

#include "exercise.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline int fz_run(const uint8_t *data, size_t size, const char *format,
                         enum fz_mode mode)
{
    char why[1024];
    int fd_before = fz_lowest_free_fd();
    const char *path = fz_write_input(data, size, mode);
    if (fz_exercise_and_probe(path, format, why, sizeof(why)) < 0) {
        fprintf(stderr, "imgfs-fuzz: %s\n", why);
        abort();
    }
    int fd_after = fz_lowest_free_fd();
    if (fd_after != fd_before) {
        fprintf(stderr, "imgfs-fuzz: file descriptor %d leaked by this input\n", fd_before);
        abort();
    }
    return 0;
}

/* One line per target file: FZ_TARGET("qcow2", FZ_SINGLE) */
#define FZ_TARGET(format, mode)                                      \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)     \
    {                                                                \
        return fz_run(data, size, format, mode);                     \
    }

#endif
