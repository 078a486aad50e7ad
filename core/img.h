/* The image model: an opened disk image, its backing chain, and the one map
 * question every driver answers.  Knows no format and no FUSE. */
#ifndef IMGFS_IMG_H
#define IMGFS_IMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lock.h"

#define IMG_ERRMSG_MAX 512
/* A chain deeper than this is refused: it is almost surely a loop or an
 * attack, and each layer costs a file descriptor. */
#define IMG_MAX_CHAIN_DEPTH 64
/* Bytes handed to every driver's probe. */
#define IMG_PROBE_BYTES 4096

enum img_kind {
    IMG_DATA,        /* bytes are stored in this layer */
    IMG_ZERO,        /* allocated here and reads as zeros (a hole for lseek) */
    IMG_UNALLOCATED, /* this layer defers to its backing layer; after a chain
                        walk: allocated nowhere, reads as zeros */
};

struct img;

struct img_extent {
    uint64_t off, len;   /* guest range */
    enum img_kind kind;
    int fd;              /* host file holding the bytes plainly, or -1 */
    uint64_t host_off;   /* valid when fd >= 0 */
    bool compressed;     /* DATA stored compressed (fd is -1) */
    /* Filled by img_map (the chain walk), not by drivers: */
    struct img *layer;   /* the layer that answered */
    unsigned depth;      /* 0 = top of the chain */
};

struct img_open_opts {
    const char *format;     /* driver name, or NULL to probe */
    bool read_write;        /* open for writing (drivers may refuse) */
    bool force_share;       /* do not take QEMU's lock bytes (qemu-img -U) */
    bool no_backing;        /* open this layer alone */
    bool allow_outside;     /* backing/data/extent files may leave `confine` */
    const char *confine;    /* directory that every referenced file must lie
                               in; NULL = the folder of the top image */
    bool unsafe_cache;      /* never sync to stable storage (qemu-img's
                               "-t unsafe", its default for convert): the
                               write order still protects against a killed
                               process, not against a power loss */
};

struct img_format;

struct img {
    char *path;              /* as given; used in every message */
    char *dir;               /* real folder of the file: relative names
                                recorded in the image resolve against it */
    char *confine;           /* real path of the confinement root */
    const struct img_format *fmt;
    int fd;                  /* the image file itself */
    bool read_write;
    bool force_share;
    bool allow_outside;
    bool unsafe_cache;       /* img_sync does nothing (see img_open_opts) */
    uint64_t size;           /* virtual size in bytes */
    uint32_t cluster_size;   /* mapping granularity (st_blksize); >= 512 */
    char *backing_file;      /* as recorded in the image, or NULL */
    char *backing_fmt;       /* recorded backing format, or NULL */
    struct img *backing;     /* opened backing layer, or NULL */
    unsigned depth;          /* position in the chain, 0 = top */
    void *priv;              /* driver state */
    struct img_lock lock;
    /* Other files this image reads (data file, extents): their real paths,
     * so that a directory listing can hide them and locks can cover them. */
    char **companions;
    size_t n_companions;
    int *companion_fds;
    struct img_lock *companion_locks;
    char errmsg[IMG_ERRMSG_MAX];
};

/* Open the image at `path` and, unless o->no_backing, its whole backing
 * chain.  On failure returns a negative errno, *out is NULL and `err` holds
 * one line naming the file and the fault. */
int img_open(const char *path, const struct img_open_opts *o,
             struct img **out, char *err, size_t errlen);
void img_close(struct img *img);

/* What is at guest offset `off` of the whole chain?  Fills `ext` with the
 * first extent, at most `len` bytes long.  off + len must not pass img->size.
 * UNALLOCATED in the answer means no layer holds the range: it reads as
 * zeros. */
int img_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext);

/* Read the bytes of one extent returned by img_map (any kind). */
int img_read_extent(const struct img_extent *ext, void *buf);

/* Read guest bytes [off, off+len) of the chain; off + len <= img->size. */
int img_read(struct img *img, void *buf, size_t len, uint64_t off);

/* Bytes of the chain's map that are DATA (st_blocks). */
int img_data_bytes(struct img *img, uint64_t *bytes);

/* Probe the file's format: the driver with the highest score. */
const struct img_format *img_probe(int fd, const char *filename);

/* The last failure message of the calling thread (any image): what a
 * multi-threaded caller should log instead of img->errmsg. */
const char *img_last_error(void);

/* Name of the image's driver ("qcow2"), or of the probed format. */
const char *img_format_name(const struct img *img);
const char *img_probe_name(int fd, const char *filename);

/* Record a failure on `img`: "PATH: message".  Returns -err so that a
 * driver can write `return img_error(img, EINVAL, "...", ...)`. */
int img_error(struct img *img, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Open a file that the image names (backing file, data file, extent),
 * resolving it against the image's folder and refusing it when it lies
 * outside the confinement root.  Returns an fd, or a negative errno with
 * the message on img.  Data/extent files are also locked and recorded as
 * companions (pass is_companion); the image owns their fds, and a companion
 * named twice comes back as the same fd. */
int img_open_referenced(struct img *img, const char *name, const char *what,
                        bool is_companion, char **real_out);

/* Full pread of the image's own file; a read past the end is an error that
 * names `what` (e.g. "L2 table"). */
int img_pread(struct img *img, int fd, void *buf, size_t len, uint64_t off,
              const char *what);

/* Full pwrite (retrying short writes and EINTR): 0 or a negative errno.
 * For files that have no struct img yet (create). */
int img_write_full(int fd, const void *buf, size_t len, uint64_t off);

/* Full pwrite to one of the image's files; a failure names `what`. */
int img_pwrite(struct img *img, int fd, const void *buf, size_t len, uint64_t off,
               const char *what);

/* fdatasync one of the image's files, unless the image was opened with
 * unsafe_cache; a failure names `what`.  Drivers sync through this only. */
int img_sync(struct img *img, int fd, const char *what);

/* Size of a host file, or a negative errno. */
int64_t img_fd_size(int fd);

#endif
