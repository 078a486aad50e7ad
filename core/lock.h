/* QEMU's image locking (block/file-posix.c): shared OFD read locks on single
 * bytes, 100+i for "I hold permission i", 200+i for "I do not share
 * permission i".  Taking the same bytes QEMU takes means QEMU and imgfs never
 * write one image at once, and each says so clearly. */
#ifndef IMGFS_LOCK_H
#define IMGFS_LOCK_H

#include <stdbool.h>
#include <stddef.h>

enum {
    IMG_PERM_CONSISTENT_READ = 0,
    IMG_PERM_WRITE = 1,
    IMG_PERM_WRITE_UNCHANGED = 2,
    IMG_PERM_RESIZE = 3,
    IMG_PERM_COUNT = 4,
};

struct img_lock {
    int fd;          /* -1 when nothing is held */
    bool write;
};

/* Test the opposite bytes, then take ours on `fd`.  A reader holds
 * consistent-read and does not share write or resize; a writer also holds
 * write and resize.  On conflict returns -EAGAIN with a message naming `path`
 * in `err`. */
int img_lock_take(struct img_lock *lk, int fd, bool write, const char *path,
                  char *err, size_t errlen);
void img_lock_release(struct img_lock *lk);

#endif
