/* raw: the file is the disk.  Its map comes from the host file system's own
 * SEEK_DATA / SEEK_HOLE, so a sparse raw file stays sparse through imgfs. */
#include "core/format.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define RAW_BLKSIZE 65536

/* Anything can be raw, so raw only wins when nothing else claims the file. */
static int raw_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)head; (void)len; (void)filename;
    return 1;
}

static int raw_open(struct img *img, const struct img_open_opts *o)
{
    (void)o;
    int64_t size = img_fd_size(img->fd);
    if (size < 0)
        return img_error(img, (int)-size, "cannot get the size: %s", strerror((int)-size));
    img->size = (uint64_t)size;
    img->cluster_size = RAW_BLKSIZE;
    return 0;
}

static void raw_close(struct img *img)
{
    (void)img;
}

static int raw_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    uint64_t end = off + len;
    ext->off = off;
    off_t data = lseek(img->fd, (off_t)off, SEEK_DATA);
    if (data < 0 && errno != ENXIO)
        goto plain;   /* no SEEK_DATA here (or a device): call it all data */
    if (data < 0 || (uint64_t)data >= end) {
        ext->kind = IMG_ZERO;
        ext->len = len;
        return 0;
    }
    if ((uint64_t)data > off) {
        ext->kind = IMG_ZERO;
        ext->len = (uint64_t)data - off;
        return 0;
    }
    off_t hole = lseek(img->fd, (off_t)off, SEEK_HOLE);
    if (hole > (off_t)off && (uint64_t)hole < end)
        end = (uint64_t)hole;
plain:
    ext->kind = IMG_DATA;
    ext->len = end - off;
    ext->fd = img->fd;
    ext->host_off = off;
    return 0;
}

const struct img_format img_format_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .map = raw_map,
};
