/* QEMU-compatible lock bytes; see lock.h for the scheme. */
#include "lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define LOCK_BASE_PERM 100   /* 100+i: I hold permission i */
#define LOCK_BASE_SHARE 200  /* 200+i: I do not share permission i */

static const char *const perm_names[IMG_PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize",
};

/* OFD locks belong to the open file description, so two descriptors of one
 * process do not silently share them; old kernels lack them, then POSIX
 * locks are the fallback, as in QEMU. */
static int lock_byte(int fd, int cmd_ofd, int cmd_posix, struct flock *fl)
{
    if (fcntl(fd, cmd_ofd, fl) == 0)
        return 0;
    if (errno != EINVAL)
        return -errno;
    return fcntl(fd, cmd_posix, fl) == 0 ? 0 : -errno;
}

static int take_byte(int fd, int byte)
{
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    return lock_byte(fd, F_OFD_SETLK, F_SETLK, &fl);
}

/* 1 when another holder has a lock on `byte`, 0 when free. */
static int byte_taken_by_other(int fd, int byte)
{
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    int r = lock_byte(fd, F_OFD_GETLK, F_GETLK, &fl);
    if (r < 0)
        return r;
    return fl.l_type != F_UNLCK;
}

static void drop_all(int fd)
{
    struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = LOCK_BASE_PERM,
                        .l_len = LOCK_BASE_SHARE + IMG_PERM_COUNT - LOCK_BASE_PERM };
    lock_byte(fd, F_OFD_SETLK, F_SETLK, &fl);
}

static bool holds_perm(bool write, int i)
{
    return i == IMG_PERM_CONSISTENT_READ || (write && (i == IMG_PERM_WRITE || i == IMG_PERM_RESIZE));
}

static bool unshares_perm(int i)
{
    return i == IMG_PERM_WRITE || i == IMG_PERM_RESIZE;
}

int img_lock_take(struct img_lock *lk, int fd, bool write, const char *path,
                  char *err, size_t errlen)
{
    lk->fd = -1;
    for (int i = 0; i < IMG_PERM_COUNT; i++) {
        int r = 0;
        if (holds_perm(write, i))
            r = take_byte(fd, LOCK_BASE_PERM + i);
        if (r == 0 && unshares_perm(i))
            r = take_byte(fd, LOCK_BASE_SHARE + i);
        if (r < 0 && r != -EAGAIN && r != -EACCES) {
            drop_all(fd);
            snprintf(err, errlen, "%s: cannot lock: %s", path, strerror(-r));
            return r;
        }
        if (r < 0)
            goto in_use;
    }
    for (int i = 0; i < IMG_PERM_COUNT; i++) {
        /* Someone refuses to share what we hold, or holds what we refuse. */
        int conflict = 0;
        if (holds_perm(write, i))
            conflict = byte_taken_by_other(fd, LOCK_BASE_SHARE + i);
        if (conflict == 0 && unshares_perm(i))
            conflict = byte_taken_by_other(fd, LOCK_BASE_PERM + i);
        if (conflict < 0) {
            drop_all(fd);
            snprintf(err, errlen, "%s: cannot test locks: %s", path, strerror(-conflict));
            return conflict;
        }
        if (conflict) {
            drop_all(fd);
            snprintf(err, errlen,
                     "%s: image is in use: another process holds or refuses its \"%s\" lock "
                     "(is a VM or qemu-img using it? force_share / -U reads it anyway)",
                     path, perm_names[i]);
            return -EAGAIN;
        }
    }
    lk->fd = fd;
    lk->write = write;
    return 0;
in_use:
    drop_all(fd);
    snprintf(err, errlen, "%s: image is in use: its lock bytes are held by another process "
             "(force_share / -U reads it anyway)", path);
    return -EAGAIN;
}

void img_lock_release(struct img_lock *lk)
{
    if (lk->fd >= 0)
        drop_all(lk->fd);
    lk->fd = -1;
}
