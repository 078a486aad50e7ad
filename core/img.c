/* Opening images and their backing chains, and the chain-wide map and read
 * that every user (FUSE, imgctl) goes through. */
#include "img.h"
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_CLUSTER_SIZE 65536

/* The last message of the calling thread.  FUSE serves one image from many
 * threads: a thread that saw a failure reads its own message here, while
 * img->errmsg (for single-threaded callers) is written under a lock. */
static __thread char last_error[IMG_ERRMSG_MAX];
static pthread_mutex_t errmsg_lock = PTHREAD_MUTEX_INITIALIZER;

const char *img_last_error(void)
{
    return last_error;
}

/* Messages are cut at IMG_ERRMSG_MAX on purpose; going through vsnprintf
 * keeps that explicit. */
static void set_errmsg(struct img *img, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_errmsg(struct img *img, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&errmsg_lock);
    memcpy(img->errmsg, last_error, sizeof(img->errmsg));
    pthread_mutex_unlock(&errmsg_lock);
}

const char *img_format_name(const struct img *img)
{
    return img->fmt ? img->fmt->name : NULL;
}

const char *img_probe_name(int fd, const char *filename)
{
    const struct img_format *f = img_probe(fd, filename);
    return f ? f->name : NULL;
}

void img_check_report(struct img_check *res, const char *fmt, ...)
{
    if (!res->report)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    res->report(res->report_ctx, line);
}

int img_error(struct img *img, int err, const char *fmt, ...)
{
    char msg[IMG_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    set_errmsg(img, "%s: %s", img->path, msg);
    return -err;
}

int64_t img_fd_size(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode)) {
        uint64_t bytes;
        if (ioctl(fd, BLKGETSIZE64, &bytes) < 0)
            return -errno;
        return (int64_t)bytes;
    }
    return st.st_size;
}

int img_pread(struct img *img, int fd, void *buf, size_t len, uint64_t off,
              const char *what)
{
    uint8_t *p = buf;
    size_t done = 0;
    if (off > (uint64_t)INT64_MAX - len)
        return img_error(img, EINVAL, "%s at 0x%llx: offset out of range", what,
                         (unsigned long long)off);
    while (done < len) {
        ssize_t n = pread(fd, p + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return img_error(img, errno, "cannot read %s at 0x%llx: %s", what,
                             (unsigned long long)(off + done), strerror(errno));
        if (n == 0)
            return img_error(img, EIO, "%s at 0x%llx lies past the end of the file", what,
                             (unsigned long long)off);
        done += (size_t)n;
    }
    return 0;
}

int img_write_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    if (off > (uint64_t)INT64_MAX - len)
        return -EINVAL;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int img_pwrite(struct img *img, int fd, const void *buf, size_t len, uint64_t off,
               const char *what)
{
    int r = img_write_full(fd, buf, len, off);
    if (r < 0)
        return img_error(img, -r, "cannot write %s at 0x%llx: %s", what,
                         (unsigned long long)off, strerror(-r));
    return 0;
}

int img_sync(struct img *img, int fd, const char *what)
{
    if (img->unsafe_cache)
        return 0;
    if (fdatasync(fd) < 0)
        return img_error(img, errno, "cannot sync %s: %s", what, strerror(errno));
    return 0;
}

const struct img_format *img_format_by_name(const char *name)
{
    for (const struct img_format *const *f = img_formats; *f; f++)
        if (strcmp((*f)->name, name) == 0)
            return *f;
    return NULL;
}

const struct img_format *img_probe(int fd, const char *filename)
{
    uint8_t head[IMG_PROBE_BYTES];
    ssize_t n = pread(fd, head, sizeof(head), 0);
    if (n < 0)
        return NULL;
    const struct img_format *best = NULL;
    int best_score = 0;
    for (const struct img_format *const *f = img_formats; *f; f++) {
        int score = (*f)->probe(head, (size_t)n, filename);
        if (score > best_score) {
            best_score = score;
            best = *f;
        }
    }
    return best;
}

/* ---- names that an image records: backing, data and extent files ---- */

/* qemu accepts "json:{...}" and protocol prefixes ("nbd:", "http:") as
 * backing names; none of them is a file of the source tree, and following
 * them from an untrusted image would reach outside it. */
static bool is_pseudo_name(const char *name)
{
    if (strncmp(name, "json:", 5) == 0)
        return true;
    const char *colon = strchr(name, ':');
    const char *slash = strchr(name, '/');
    if (!colon || (slash && slash < colon))
        return false;
    for (const char *p = name; p < colon; p++)
        if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
              *p == '+' || *p == '-' || *p == '.'))
            return false;
    return true;
}

static bool path_is_under(const char *path, const char *root)
{
    size_t n = strlen(root);
    if (strcmp(root, "/") == 0)
        return true;
    return strncmp(path, root, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* Resolve `name` recorded in `img` to a real path inside the confinement
 * root.  Returns a malloc'd path or NULL with the message on img. */
static char *resolve_referenced(struct img *img, const char *name, const char *what, int *err)
{
    char joined[PATH_MAX];
    if (name[0] == '\0') {
        *err = img_error(img, EINVAL, "empty %s name", what);
        return NULL;
    }
    if (is_pseudo_name(name)) {
        *err = img_error(img, EPERM, "%s '%s' is a protocol or json: name, not a file; refused",
                         what, name);
        return NULL;
    }
    if (name[0] == '/')
        snprintf(joined, sizeof(joined), "%s", name);
    else if (snprintf(joined, sizeof(joined), "%s/%s", img->dir, name) >= (int)sizeof(joined)) {
        *err = img_error(img, ENAMETOOLONG, "%s name '%s' is too long", what, name);
        return NULL;
    }
    char *real = realpath(joined, NULL);
    if (!real) {
        *err = img_error(img, errno, "cannot open %s '%s': %s", what, name, strerror(errno));
        return NULL;
    }
    if (!img->allow_outside && !path_is_under(real, img->confine)) {
        *err = img_error(img, EPERM, "%s '%s' lies outside %s (allow with allow_outside)",
                         what, name, img->confine);
        free(real);
        return NULL;
    }
    return real;
}

/* Capacity doubles at each power of two: a descriptor of 10000 extent
 * files must not cost 10000 reallocations. */
static bool must_grow(size_t n, size_t *cap)
{
    if (n != 0 && (n & (n - 1)) != 0)
        return false;
    *cap = n ? 2 * n : 1;
    return true;
}

static int add_companion(struct img *img, char *real, int fd)
{
    size_t n = img->n_companions + 1, cap;
    if (must_grow(img->n_companions, &cap)) {
        char **names = realloc(img->companions, cap * sizeof(*names));
        if (names)
            img->companions = names;
        int *fds = realloc(img->companion_fds, cap * sizeof(*fds));
        if (fds)
            img->companion_fds = fds;
        struct img_lock *locks = realloc(img->companion_locks, cap * sizeof(*locks));
        if (locks)
            img->companion_locks = locks;
        if (!names || !fds || !locks)
            return -ENOMEM;
    }
    img->companions[n - 1] = real;
    img->companion_fds[n - 1] = fd;
    img->companion_locks[n - 1].fd = -1;
    img->n_companions = n;
    return 0;
}

/* Open a regular file or a block device, and never hang: open() of a FIFO
 * waits for a writer, a read of a terminal for a line.  Returns an fd or a
 * negative errno (-EINVAL for any other kind of file). */
static int open_data_file(const char *path, bool rw)
{
    int fd = open(path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -errno;
    struct stat st;
    int r = fstat(fd, &st) < 0 ? -errno : 0;
    if (r == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        r = -EINVAL;
    if (r == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
        r = -errno;
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
}

static const char *open_error(int err)
{
    return err == EINVAL ? "not a regular file or block device" : strerror(err);
}

int img_open_referenced(struct img *img, const char *name, const char *what,
                        bool is_companion, char **real_out)
{
    int err = 0;
    char *real = resolve_referenced(img, name, what, &err);
    if (!real)
        return err;
    bool rw = is_companion && img->read_write;
    /* A file named twice (a descriptor may list one extent file thousands
     * of times) is opened and locked once: each further lock on the same
     * file would cost the kernel a walk of all the others. */
    for (size_t i = 0; is_companion && i < img->n_companions; i++) {
        if (strcmp(img->companions[i], real) != 0)
            continue;
        if (real_out)
            *real_out = real;
        else
            free(real);
        return img->companion_fds[i];
    }
    int fd = open_data_file(real, rw);
    if (fd < 0) {
        err = img_error(img, -fd, "cannot open %s '%s': %s", what, name, open_error(-fd));
        free(real);
        return err;
    }
    if (!is_companion) {
        if (real_out)
            *real_out = real;
        else
            free(real);
        return fd;
    }
    if (real_out && !(*real_out = strdup(real))) {
        close(fd);
        free(real);
        return -ENOMEM;
    }
    if (add_companion(img, real, fd) < 0) {
        close(fd);
        free(real);
        return -ENOMEM;
    }
    if (!img->force_share) {
        char msg[IMG_ERRMSG_MAX];
        int r = img_lock_take(&img->companion_locks[img->n_companions - 1], fd, rw, real,
                              msg, sizeof(msg));
        if (r < 0) {
            set_errmsg(img, "%s: %s %s", img->path, what, msg);
            return r;
        }
    }
    return fd;
}

/* ---- opening a chain ---- */

struct chain_ctx {
    const struct img_open_opts *o;
    const char *confine;           /* real path */
    dev_t dev[IMG_MAX_CHAIN_DEPTH];
    ino_t ino[IMG_MAX_CHAIN_DEPTH];
};

static struct img *img_alloc(const char *path)
{
    struct img *img = calloc(1, sizeof(*img));
    if (!img)
        return NULL;
    img->fd = -1;
    img->lock.fd = -1;
    img->path = strdup(path);
    if (!img->path) {
        free(img);
        return NULL;
    }
    return img;
}

static int set_dir_and_confine(struct img *img, const char *confine)
{
    char *real = realpath(img->path, NULL);
    if (!real)
        return img_error(img, errno, "%s", strerror(errno));
    char *slash = strrchr(real, '/');
    if (slash == real)
        slash[1] = '\0';
    else
        *slash = '\0';
    img->dir = real;
    errno = 0;
    img->confine = confine ? realpath(confine, NULL) : strdup(img->dir);
    if (!img->confine)
        return img_error(img, errno ? errno : ENOMEM, "cannot resolve confinement folder %s",
                         confine ? confine : img->dir);
    return 0;
}

static int pick_format(struct img *img, const char *name)
{
    if (name) {
        img->fmt = img_format_by_name(name);
        if (!img->fmt)
            return img_error(img, ENOTSUP, "unknown or unsupported format '%s'", name);
        return 0;
    }
    img->fmt = img_probe(img->fd, img->path);
    if (!img->fmt)
        return img_error(img, EIO, "cannot read the header to probe the format");
    return 0;
}

static int open_backing(struct img *img, struct chain_ctx *cx, unsigned depth);

static int open_layer(struct img *img, struct chain_ctx *cx, const char *format, unsigned depth)
{
    const struct img_open_opts *o = cx->o;
    struct stat st;
    img->depth = depth;
    img->read_write = o->read_write && depth == 0;
    img->force_share = o->force_share;
    img->allow_outside = o->allow_outside;
    img->unsafe_cache = o->unsafe_cache;
    img->fd = open_data_file(img->path, img->read_write);
    if (img->fd < 0) {
        int err = -img->fd;
        img->fd = -1;
        return img_error(img, err, "cannot open: %s", open_error(err));
    }
    if (fstat(img->fd, &st) < 0)
        return img_error(img, errno, "cannot stat: %s", strerror(errno));
    for (unsigned i = 0; i < depth; i++)
        if (cx->dev[i] == st.st_dev && cx->ino[i] == st.st_ino)
            return img_error(img, ELOOP, "backing chain loop: this file is already in the chain");
    cx->dev[depth] = st.st_dev;
    cx->ino[depth] = st.st_ino;

    int r = set_dir_and_confine(img, cx->confine);
    if (r == 0 && !cx->confine)
        cx->confine = img->confine;   /* the top image fixes the root */
    if (r == 0)
        r = pick_format(img, format);
    if (r == 0 && !o->force_share) {
        r = img_lock_take(&img->lock, img->fd, img->read_write, img->path, img->errmsg,
                          sizeof(img->errmsg));
    }
    if (r < 0)
        return r;
    r = img->fmt->open(img, o);
    if (r < 0)
        return r;
    if (img->cluster_size == 0)
        img->cluster_size = DEFAULT_CLUSTER_SIZE;
    if (!o->no_backing && img->backing_file)
        return open_backing(img, cx, depth + 1);
    return 0;
}

static int open_backing(struct img *img, struct chain_ctx *cx, unsigned depth)
{
    if (depth >= IMG_MAX_CHAIN_DEPTH)
        return img_error(img, ELOOP, "backing chain deeper than %d layers", IMG_MAX_CHAIN_DEPTH);
    int err = 0;
    char *real = resolve_referenced(img, img->backing_file, "backing file", &err);
    if (!real)
        return err;
    struct img *b = img_alloc(real);
    free(real);
    if (!b)
        return -ENOMEM;
    img->backing = b;
    int r = open_layer(b, cx, img->backing_fmt, depth);
    if (r < 0) {
        /* Name this image and the layer at fault, not every layer between:
         * through a chain 64 deep the fault would fall off the message. */
        static const char sep[] = ": backing file: ";
        const char *fault = strstr(b->errmsg, sep);
        set_errmsg(img, "%s%s%s", img->path, sep, fault ? fault + strlen(sep) : b->errmsg);
    }
    return r;
}

int img_open(const char *path, const struct img_open_opts *o,
             struct img **out, char *err, size_t errlen)
{
    static const struct img_open_opts defaults;
    struct chain_ctx cx = { .o = o ? o : &defaults };
    *out = NULL;
    struct img *img = img_alloc(path);
    if (!img) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    cx.confine = cx.o->confine;
    int r = open_layer(img, &cx, cx.o->format, 0);
    if (r < 0) {
        snprintf(err, errlen, "%s", img->errmsg[0] ? img->errmsg : strerror(-r));
        img_close(img);
        return r;
    }
    *out = img;
    return 0;
}

void img_close(struct img *img)
{
    while (img) {
        struct img *backing = img->backing;
        if (img->fmt && img->priv && img->fmt->close)
            img->fmt->close(img);
        for (size_t i = 0; i < img->n_companions; i++) {
            img_lock_release(&img->companion_locks[i]);
            close(img->companion_fds[i]);
            free(img->companions[i]);
        }
        free(img->companions);
        free(img->companion_fds);
        free(img->companion_locks);
        img_lock_release(&img->lock);
        if (img->fd >= 0)
            close(img->fd);
        free(img->backing_file);
        free(img->backing_fmt);
        free(img->path);
        free(img->dir);
        free(img->confine);
        free(img);
        img = backing;
    }
}

/* ---- the chain walk ---- */

static int layer_map(struct img *layer, uint64_t off, uint64_t len, struct img_extent *ext)
{
    memset(ext, 0, sizeof(*ext));
    ext->fd = -1;
    int r = layer->fmt->map(layer, off, len, ext);
    if (r < 0)
        return r;
    if (ext->off != off || ext->len == 0 || ext->len > len)
        return img_error(layer, EIO, "driver %s answered the map of 0x%llx+0x%llx with "
                         "0x%llx+0x%llx", layer->fmt->name, (unsigned long long)off,
                         (unsigned long long)len, (unsigned long long)ext->off,
                         (unsigned long long)ext->len);
    if (ext->kind != IMG_DATA)
        ext->fd = -1;
    return 0;
}

int img_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    struct img *layer = img;
    unsigned depth = 0;
    if (len == 0 || off > img->size || len > img->size - off)
        return img_error(img, EINVAL, "map of 0x%llx+0x%llx passes the virtual size",
                         (unsigned long long)off, (unsigned long long)len);
    for (;;) {
        if (off >= layer->size) {
            /* past the end of a shorter backing file: zeros */
            memset(ext, 0, sizeof(*ext));
            *ext = (struct img_extent){ .off = off, .len = len, .kind = IMG_UNALLOCATED,
                                        .fd = -1 };
        } else {
            uint64_t n = len < layer->size - off ? len : layer->size - off;
            int r = layer_map(layer, off, n, ext);
            if (r < 0) {
                if (layer != img)
                    set_errmsg(img, "%s", layer->errmsg);
                return r;
            }
        }
        ext->layer = layer;
        ext->depth = depth;
        if (ext->kind != IMG_UNALLOCATED || !layer->backing || off >= layer->size)
            return 0;
        len = ext->len;
        layer = layer->backing;
        depth++;
    }
}

int img_read_extent(const struct img_extent *ext, void *buf)
{
    struct img *layer = ext->layer;
    if (ext->kind != IMG_DATA) {
        memset(buf, 0, ext->len);
        return 0;
    }
    if (ext->fd >= 0)
        return img_pread(layer, ext->fd, buf, ext->len, ext->host_off, "data");
    if (!layer->fmt->read)
        return img_error(layer, EIO, "driver %s cannot read 0x%llx", layer->fmt->name,
                         (unsigned long long)ext->off);
    return layer->fmt->read(layer, buf, ext->len, ext->off);
}

int img_read(struct img *img, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        struct img_extent ext;
        int r = img_map(img, off, len, &ext);
        if (r < 0)
            return r;   /* img_map left the message on img */
        r = img_read_extent(&ext, p);
        if (r < 0) {
            if (ext.layer != img)
                set_errmsg(img, "%s", ext.layer->errmsg);
            return r;
        }
        p += ext.len;
        off += ext.len;
        len -= ext.len;
    }
    return 0;
}

int img_data_bytes(struct img *img, uint64_t *bytes)
{
    uint64_t off = 0, sum = 0;
    while (off < img->size) {
        struct img_extent ext;
        int r = img_map(img, off, img->size - off, &ext);
        if (r < 0)
            return r;
        if (ext.kind == IMG_DATA)
            sum += ext.len;
        off += ext.len;
    }
    *bytes = sum;
    return 0;
}
