/* The one way every fuzz target and the regression test drive an image:
 * write the input as file(s) into a private folder, open it, walk the whole
 * map and read every DATA extent, all within fixed bounds. */
#ifndef IMGFS_FUZZ_EXERCISE_H
#define IMGFS_FUZZ_EXERCISE_H

#include <stddef.h>
#include <stdint.h>

/* Parts of a multi-file input are separated by this marker; part 0 is
 * written as "a", part 1 as "b", and so on, so that a backing name, a vmdk
 * extent name or a VHD parent locator can point at a sibling (or at
 * itself). */
#define FZ_SPLIT "@@IMGFS-SPLIT@@"
#define FZ_MAX_PARTS 6

/* Bounds per opened image: a hostile header may claim an exabyte disk of
 * one-sector extents; the point is to reach every parser path, not to copy
 * the disk. */
#define FZ_MAX_EXTENTS 100000u
#define FZ_READ_CHUNK (1u << 20)
#define FZ_READ_BUDGET (8u << 20)

enum fz_mode {
    FZ_SINGLE,   /* the whole input is one file "a" */
    FZ_SPLIT_PARTS,   /* the input is split at FZ_SPLIT into "a", "b", ... */
};

/* Create the private folder (once per process) and return its real path. */
const char *fz_dir(void);

/* Write the input as file(s) into fz_dir(), replacing the previous input's
 * files.  Returns the path of file "a" (static storage). */
const char *fz_write_input(const uint8_t *data, size_t size, enum fz_mode mode);

/* Open `path` as `format` (NULL = probe), walk the map, read the data,
 * close.  Returns 0 when every step either succeeded or failed with a message
 * naming a file of fz_dir(); otherwise -1 with the reason in `why`.  Never
 * treats a refusal of the image as a fault: refusing is what hostile input
 * deserves. */
int fz_exercise(const char *path, const char *format, char *why, size_t whylen);

/* fz_exercise with `format`, then again with probing when the probe would
 * pick another driver.  Same result convention. */
int fz_exercise_and_probe(const char *path, const char *format, char *why, size_t whylen);

/* Lowest free file descriptor: equal before and after an input unless the
 * code under test leaked one. */
int fz_lowest_free_fd(void);

#endif
