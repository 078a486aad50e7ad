/* qcow2 create: options as qemu-img spells them, and the layout qemu
 * writes (header cluster, refcount table, refcount block, L1 table).
 *
 * The file starts as an empty image of size 0 (three clusters); the L1
 * table, and with preallocation=metadata the L2 tables and data clusters,
 * are then added through the writer, so the refcount structures grow by
 * the same code (and the same crash-safe order) as for any other write. */
#include "qcow2.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/bytes.h"
#include "core/parse.h"

#define QCOW2_DEFAULT_CLUSTER_BITS 16
#define QCOW2_V3_HEADER_LEN 112   /* with the compression type byte, padded */

struct create_params {
    uint64_t size;
    unsigned version;
    unsigned cluster_bits;
    unsigned refcount_order;
    bool extended_l2, lazy_refcounts, prealloc_metadata;
    uint8_t compression;
    const char *backing, *backing_fmt;
};

static int create_error(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int create_error(char *err, size_t errlen, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -r;
}

static int log2_exact(uint64_t v)
{
    if (v == 0 || (v & (v - 1)))
        return -1;
    return __builtin_ctzll(v);
}

static int parse_bool_opt(const char *k, const char *v, bool *out, char *err, size_t errlen)
{
    if (img_parse_bool(v, out) < 0)
        return create_error(err, errlen, EINVAL, "Parameter '%s' expects 'on' or 'off'", k);
    return 0;
}

static int parse_cluster_size(const char *v, struct create_params *p, char *err, size_t errlen)
{
    uint64_t bytes;
    int bits = img_parse_size(v, &bytes) < 0 ? -1 : log2_exact(bytes);
    if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS)
        return create_error(err, errlen, EINVAL, "Cluster size must be a power of two "
                            "between 512 and 2048k");
    p->cluster_bits = (unsigned)bits;
    return 0;
}

static int parse_refcount_bits(const char *v, struct create_params *p, char *err, size_t errlen)
{
    char *end;
    unsigned long bits = strtoul(v, &end, 0);   /* qemu numbers take 0x and 0 prefixes */
    int order = *v && !*end ? log2_exact(bits) : -1;
    if (order < 0 || order > QCOW2_MAX_REFCOUNT_ORDER)
        return create_error(err, errlen, EINVAL, "Refcount width must be a power of two "
                            "and may not exceed 64 bits");
    p->refcount_order = (unsigned)order;
    return 0;
}

/* As qemu-img lists them for qcow2, in the order of its Formatting line
 * (the encryption keys first).  Encryption and external data files are
 * listed so that the line and -o help match qemu-img; create refuses them. */
const struct img_create_option qcow2_create_options[] = {
    { "encryption", "bool (on/off)",
      "Encrypt with format 'aes' (deprecated spelling of encrypt.format=aes; not supported)",
      NULL },
    { "encrypt.format", "str", "Encryption format, 'aes' or 'luks' (not supported)", NULL },
    { "encrypt.key-secret", "str", "ID of the secret holding the key or passphrase", NULL },
    { "encrypt.cipher-alg", "str", "Encryption cipher algorithm", NULL },
    { "encrypt.cipher-mode", "str", "Encryption cipher mode", NULL },
    { "encrypt.ivgen-alg", "str", "IV generator algorithm", NULL },
    { "encrypt.ivgen-hash-alg", "str", "Hash algorithm of the IV generator", NULL },
    { "encrypt.hash-alg", "str", "Encryption hash algorithm", NULL },
    { "encrypt.iter-time", "num", "Milliseconds to spend in PBKDF", NULL },
    { "cluster_size", "size", "qcow2 cluster size", "65536" },
    { "extended_l2", "bool (on/off)", "Extended L2 tables (subclusters)", "off" },
    { "preallocation", "str",
      "Preallocation mode (allowed values: off, metadata; falloc and full not supported)",
      NULL },
    { "compression_type", "str", "Compression method of compressed clusters (zlib, zstd)",
      "zlib" },
    { "size", "size", "Virtual disk size", NULL },
    { "compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])", NULL },
    { "backing_file", "str", "File name of the backing image", NULL },
    { "backing_fmt", "str", "Format of the backing image", NULL },
    { "data_file", "str", "File name of an external data file (not supported)", NULL },
    { "data_file_raw", "bool (on/off)",
      "The external data file stays valid as a raw image (not supported)", NULL },
    { "lazy_refcounts", "bool (on/off)", "Postpone refcount updates", "off" },
    { "refcount_bits", "num", "Width of a refcount entry in bits", "16" },
    { NULL, NULL, NULL, NULL },
};

static int parse_one(const char *k, const char *v, struct create_params *p, char *err,
                     size_t errlen)
{
    if (strcmp(k, "size") == 0)
        return 0;   /* the caller folded it into o->size */
    /* Placement hints of the host file (img_file_create_options): the
     * image reads the same without them, so they are accepted and left. */
    if (strcmp(k, "nocow") == 0 || strcmp(k, "extent_size_hint") == 0)
        return 0;
    if (strcmp(k, "compat") == 0) {
        if (strcmp(v, "0.10") == 0 || strcmp(v, "v2") == 0)
            p->version = 2;
        else if (strcmp(v, "1.1") == 0 || strcmp(v, "v3") == 0)
            p->version = 3;
        else
            return create_error(err, errlen, EINVAL, "Invalid compatibility level: '%s'", v);
        return 0;
    }
    if (strcmp(k, "cluster_size") == 0)
        return parse_cluster_size(v, p, err, errlen);
    if (strcmp(k, "refcount_bits") == 0)
        return parse_refcount_bits(v, p, err, errlen);
    if (strcmp(k, "extended_l2") == 0)
        return parse_bool_opt(k, v, &p->extended_l2, err, errlen);
    if (strcmp(k, "lazy_refcounts") == 0)
        return parse_bool_opt(k, v, &p->lazy_refcounts, err, errlen);
    if (strcmp(k, "compression_type") == 0) {
        if (strcmp(v, "zlib") == 0)
            p->compression = QCOW2_COMPRESSION_ZLIB;
        else if (strcmp(v, "zstd") == 0)
            p->compression = QCOW2_COMPRESSION_ZSTD;
        else
            return create_error(err, errlen, EINVAL, "Invalid parameter '%s' for "
                                "compression_type", v);
        return 0;
    }
    if (strcmp(k, "preallocation") == 0) {
        if (strcmp(v, "off") == 0 || strcmp(v, "metadata") == 0) {
            p->prealloc_metadata = strcmp(v, "metadata") == 0;
            return 0;
        }
        if (strcmp(v, "falloc") == 0 || strcmp(v, "full") == 0)
            return create_error(err, errlen, ENOTSUP, "preallocation=%s is not supported "
                                "for qcow2 yet (use off or metadata)", v);
        return create_error(err, errlen, EINVAL, "Invalid preallocation mode: '%s'", v);
    }
    if (strcmp(k, "backing_file") == 0) {
        p->backing = p->backing ? p->backing : v;
        return 0;
    }
    if (strcmp(k, "backing_fmt") == 0) {
        p->backing_fmt = p->backing_fmt ? p->backing_fmt : v;
        return 0;
    }
    if (strcmp(k, "data_file") == 0 || strcmp(k, "data_file_raw") == 0)
        return create_error(err, errlen, ENOTSUP, "'%s': qcow2 images with an external data "
                            "file are not supported yet", k);
    if (strcmp(k, "encryption") == 0 || strncmp(k, "encrypt.", 8) == 0)
        return create_error(err, errlen, ENOTSUP, "'%s': encrypted qcow2 images are not "
                            "supported", k);
    return create_error(err, errlen, EINVAL, "Invalid parameter '%s'", k);
}

/* Combinations qemu refuses, with its reasons. */
static int check_params(const struct create_params *p, char *err, size_t errlen)
{
    if (p->size & 511)
        return create_error(err, errlen, EINVAL, "Image size must be a multiple of 512 bytes");
    if (p->version == 2 && p->refcount_order != 4)
        return create_error(err, errlen, EINVAL, "Different refcount widths than 16 bits "
                            "require compatibility level 1.1 or above (use compat=1.1 or "
                            "greater)");
    if (p->version == 2 && p->lazy_refcounts)
        return create_error(err, errlen, EINVAL, "Lazy refcounts only supported with "
                            "compatibility level 1.1 and above (use compat=1.1 or greater)");
    if (p->version == 2 && p->extended_l2)
        return create_error(err, errlen, EINVAL, "Extended L2 entries are only supported "
                            "with compatibility level 1.1 and above (use compat=1.1 or "
                            "greater)");
    if (p->version == 2 && p->compression != QCOW2_COMPRESSION_ZLIB)
        return create_error(err, errlen, EINVAL, "Compression type selection is only "
                            "supported with compatibility level 1.1 and above (use "
                            "compat=1.1 or greater)");
    if (p->extended_l2 && p->cluster_bits < QCOW2_MIN_EXT_L2_CLUSTER_BITS)
        return create_error(err, errlen, EINVAL, "Extended L2 entries are only supported "
                            "with cluster sizes of at least 16 KB");
    if (p->backing_fmt && !p->backing)
        return create_error(err, errlen, EINVAL, "Backing format cannot be used without "
                            "backing file");
    if (p->backing && strlen(p->backing) > QCOW2_MAX_BACKING_NAME)
        return create_error(err, errlen, EINVAL, "Backing file name too long");
    if (p->backing_fmt && strlen(p->backing_fmt) > QCOW2_MAX_BACKING_FMT)
        return create_error(err, errlen, EINVAL, "Backing format name too long");
    return 0;
}

static int parse_params(const struct img_create_opts *o, struct create_params *p, char *err,
                        size_t errlen)
{
    *p = (struct create_params){
        .size = o->size, .version = 3, .cluster_bits = QCOW2_DEFAULT_CLUSTER_BITS,
        .refcount_order = 4, .backing = o->backing_file, .backing_fmt = o->backing_fmt,
    };
    for (size_t i = 0; i < o->n_opts; i++) {
        int r = parse_one(o->opts[i].key, o->opts[i].value ? o->opts[i].value : "", p,
                          err, errlen);
        if (r < 0)
            return r;
    }
    return check_params(p, err, errlen);
}

/* ---- the empty image ---- */

static size_t fixed_header(const struct create_params *p, uint8_t *h)
{
    uint64_t cs = 1ull << p->cluster_bits;
    put_be32(h, QCOW2_MAGIC);
    put_be32(h + 4, p->version);
    put_be32(h + 20, p->cluster_bits);
    /* size 0, no L1 entries yet: resize adds them.  QEMU too names the
     * cluster after the refcount block even while the table is empty. */
    put_be64(h + 40, 3 * cs);
    put_be64(h + 48, cs);
    put_be32(h + 56, 1);
    if (p->version == 2)
        return QCOW2_V2_HEADER_LEN;
    uint64_t incompat = 0;
    if (p->compression != QCOW2_COMPRESSION_ZLIB)
        incompat |= QCOW2_INCOMPAT_COMPRESSION;
    if (p->extended_l2)
        incompat |= QCOW2_INCOMPAT_EXTL2;
    put_be64(h + 72, incompat);
    put_be64(h + 80, p->lazy_refcounts ? 1 : 0);
    put_be32(h + 96, p->refcount_order);
    put_be32(h + 100, QCOW2_V3_HEADER_LEN);
    h[104] = p->compression;
    return QCOW2_V3_HEADER_LEN;
}

static void set_refcount(uint8_t *block, unsigned order, uint64_t i, uint64_t v)
{
    unsigned bits = 1u << order;
    if (bits >= 8) {
        for (unsigned b = 0; b < bits / 8; b++)
            block[i * (bits / 8) + b] = (uint8_t)(v >> (bits - 8 - 8 * b));
        return;
    }
    unsigned per = 8 / bits, shift = bits * (unsigned)(i % per);
    block[i / per] |= (uint8_t)(v << shift);
}

/* Header, refcount table and block: clusters 0, 1 and 2, each counted once. */
static int build_empty(const struct create_params *p, uint8_t *buf, char *err, size_t errlen)
{
    size_t cs = (size_t)1 << p->cluster_bits;
    uint8_t fixed[QCOW2_V3_HEADER_LEN] = { 0 };
    uint8_t exts[QCOW2_FEATURE_TABLE_EXT_BYTES];
    size_t fixed_len = fixed_header(p, fixed);
    size_t exts_len = p->version == 3 ? qcow2_feature_table(exts) : 0;
    if (qcow2_build_header(buf, cs, fixed, fixed_len, exts, exts_len, p->backing,
                           p->backing_fmt) < 0)
        return create_error(err, errlen, EINVAL, "the backing file name does not fit in the "
                            "header cluster of %zu bytes", cs);
    put_be64(buf + cs, 2 * (uint64_t)cs);
    for (uint64_t i = 0; i < 3; i++)
        set_refcount(buf + 2 * cs, p->refcount_order, i, 1);
    return 0;
}

/* Write `len` bytes at `off`; 0 or an errno. */
static int write_at(int fd, const uint8_t *buf, size_t len, off_t off)
{
    for (size_t done = 0; done < len;) {
        ssize_t n = pwrite(fd, buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? errno : EIO;
        done += (size_t)n;
    }
    return 0;
}

/* An unnamed file in the folder of `path` (O_TMPFILE), linked in once it is
 * complete; -1 where the file system has none, or `path` exists already. */
static int open_unnamed(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0 || errno != ENOENT)
        return -1;
    char *dir = strdup(path);
    if (!dir)
        return -1;
    char *slash = strrchr(dir, '/');
    const char *folder = slash ? (slash == dir ? "/" : (*slash = '\0', dir)) : ".";
    int fd = open(folder, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
    free(dir);
    return fd;
}

static int link_unnamed(int fd, const char *path)
{
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) < 0 ? errno : 0;
}

/* Header, refcount table and block appear at `path` all at once: written
 * to an unnamed file and linked in when complete, so that a kill midway
 * leaves no torn image, only none.  Where that cannot be (an existing file
 * to overwrite, no O_TMPFILE), the clusters go refcount block first and
 * header last, so that the file is no qcow2 until all three are there. */
static int write_empty(const char *path, const struct create_params *p, char *err, size_t errlen)
{
    size_t cs = (size_t)1 << p->cluster_bits;
    uint8_t *buf = calloc(3, cs);
    if (!buf)
        return create_error(err, errlen, ENOMEM, "%s", "out of memory");
    int r = build_empty(p, buf, err, errlen);
    int fd = r < 0 ? -1 : open_unnamed(path);
    bool unnamed = fd >= 0;
    if (r == 0 && !unnamed && (fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        r = create_error(err, errlen, errno, "Could not create '%s': %s", path, strerror(errno));
    int e = 0;
    for (int c = 2; r == 0 && e == 0 && c >= 0; c--)
        e = write_at(fd, buf + (size_t)c * cs, cs, (off_t)((size_t)c * cs));
    if (r == 0 && e == 0 && fdatasync(fd) < 0)
        e = errno;
    if (r == 0 && e == 0 && unnamed)
        e = link_unnamed(fd, path);
    if (r == 0 && e)
        r = create_error(err, errlen, e, "Could not write '%s': %s", path, strerror(e));
    if (fd >= 0)
        close(fd);
    free(buf);
    return r;
}

/* ---- growing it to the asked size ---- */

/* preallocation=metadata: every cluster allocated (L2 tables and data),
 * nothing written to the data clusters, the file extended over them. */
static int preallocate(struct img *img)
{
    struct qcow2 *q = img->priv;
    uint64_t step = 1ull << (q->geom.cluster_bits + q->l2_bits);
    uint64_t last_end = 0;
    int r = 0;
    pthread_rwlock_wrlock(&q->meta);
    for (uint64_t off = 0; r == 0 && off < img->size; off += step) {
        uint64_t len = img->size - off < step ? img->size - off : step;
        r = qcow2_preallocate_range(img, q, off, len, &last_end);
    }
    if (r == 0)
        r = qcow2_flush_locked(img, q);
    pthread_rwlock_unlock(&q->meta);
    if (r == 0 && last_end > (uint64_t)img_fd_size(img->fd) && ftruncate(img->fd, (off_t)last_end) < 0)
        r = img_error(img, errno, "cannot extend the file: %s", strerror(errno));
    return r;
}

static int grow_to_size(const char *path, const struct create_params *p, char *err, size_t errlen)
{
    struct img_open_opts oo = { .format = "qcow2", .read_write = true, .no_backing = true,
                                .allow_outside = true };
    struct img *img;
    int r = img_open(path, &oo, &img, err, errlen);
    if (r < 0)
        return r;
    if (p->size)
        r = img->fmt->resize(img, p->size, false);
    if (r == 0 && p->prealloc_metadata)
        r = preallocate(img);
    if (r == 0)
        r = img->fmt->flush(img);
    if (r < 0)
        snprintf(err, errlen, "%s", img->errmsg);
    img_close(img);
    return r;
}

int qcow2_create(const char *path, const struct img_create_opts *o, char *err, size_t errlen)
{
    struct create_params p;
    int r = parse_params(o, &p, err, errlen);
    if (r == 0)
        r = write_empty(path, &p, err, errlen);
    if (r == 0)
        r = grow_to_size(path, &p, err, errlen);
    return r;
}
