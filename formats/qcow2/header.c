/* qcow2 header: parsing, validation, header extensions, backing and data
 * file names, the L1 table.  Every number read here is checked before it
 * sizes an allocation or addresses the file. */
#include "qcow2.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bytes.h"

int qcow2_parse_header(const uint8_t *b, size_t len, struct qcow2_header *h,
                       const char **why)
{
    memset(h, 0, sizeof(*h));
    if (len < 8) {
        *why = "file too short for a qcow2 header";
        return -EINVAL;
    }
    h->magic = get_be32(b);
    h->version = get_be32(b + 4);
    if (h->magic != QCOW2_MAGIC) {
        *why = "not a qcow2 image (bad magic)";
        return -EINVAL;
    }
    if (h->version != 2 && h->version != 3)
        return 0;   /* the caller names the version */
    if (len < QCOW2_V2_HEADER_LEN || (h->version == 3 && len < QCOW2_V3_MIN_HEADER_LEN)) {
        *why = "file too short for a qcow2 header";
        return -EINVAL;
    }
    h->backing_file_offset = get_be64(b + 8);
    h->backing_file_size = get_be32(b + 16);
    h->cluster_bits = get_be32(b + 20);
    h->size = get_be64(b + 24);
    h->crypt_method = get_be32(b + 32);
    h->l1_size = get_be32(b + 36);
    h->l1_table_offset = get_be64(b + 40);
    h->refcount_table_offset = get_be64(b + 48);
    h->refcount_table_clusters = get_be32(b + 56);
    h->nb_snapshots = get_be32(b + 60);
    h->snapshots_offset = get_be64(b + 64);
    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LEN;
        return 0;
    }
    h->incompatible = get_be64(b + 72);
    h->compatible = get_be64(b + 80);
    h->autoclear = get_be64(b + 88);
    h->refcount_order = get_be32(b + 96);
    h->header_length = get_be32(b + 100);
    /* The compression type byte exists only in headers long enough. */
    if (h->header_length > QCOW2_V3_MIN_HEADER_LEN && len > QCOW2_V3_MIN_HEADER_LEN)
        h->compression_type = b[104];
    return 0;
}

/* Checks of the fixed header that need no extension. */
static int check_fixed(struct img *img, const struct qcow2_header *h, int64_t file_size)
{
    if (h->version != 2 && h->version != 3)
        return img_error(img, ENOTSUP, "unsupported qcow2 version %u", h->version);
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return img_error(img, EINVAL, "cluster_bits %u is out of range (%d..%d)",
                         h->cluster_bits, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    uint64_t cluster_size = 1ull << h->cluster_bits;
    if (h->version == 3 && h->header_length < QCOW2_V3_MIN_HEADER_LEN)
        return img_error(img, EINVAL, "header_length %u is shorter than %d bytes",
                         h->header_length, QCOW2_V3_MIN_HEADER_LEN);
    if (h->header_length > cluster_size)
        return img_error(img, EINVAL, "header_length %u exceeds the cluster size",
                         h->header_length);
    if (h->header_length > (uint64_t)file_size)
        return img_error(img, EINVAL, "header (%u bytes) passes the end of the file",
                         h->header_length);
    if (h->crypt_method != 0)
        return img_error(img, ENOTSUP, "encrypted qcow2 images are not supported yet");
    if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
        return img_error(img, EINVAL, "refcount_order %u is larger than %d",
                         h->refcount_order, QCOW2_MAX_REFCOUNT_ORDER);
    if (h->size > (uint64_t)INT64_MAX)
        return img_error(img, EINVAL, "virtual size 0x%llx is too large",
                         (unsigned long long)h->size);
    return 0;
}

/* ---- header extensions ---- */

struct qcow2_exts {
    const uint8_t *feature_names;   /* into the header buffer, or NULL */
    uint32_t feature_names_len;
    char *backing_fmt;
    char *data_file;
};

static char *dup_ext_string(struct img *img, const uint8_t *p, uint32_t len,
                            const char *what, int *err)
{
    if (len == 0 || memchr(p, 0, len)) {
        *err = img_error(img, EINVAL, "%s header extension holds an empty or NUL-cut name",
                         what);
        return NULL;
    }
    char *s = strndup((const char *)p, len);
    if (!s)
        *err = -ENOMEM;
    return s;
}

static int take_extension(struct img *img, struct qcow2_exts *x, uint32_t type,
                          const uint8_t *data, uint32_t len)
{
    int err = 0;
    switch (type) {
    case QCOW2_EXT_BACKING_FMT:
        if (len > QCOW2_MAX_BACKING_FMT)
            return img_error(img, EINVAL, "backing format name of %u bytes is too long", len);
        free(x->backing_fmt);
        x->backing_fmt = dup_ext_string(img, data, len, "backing format", &err);
        return err;
    case QCOW2_EXT_DATA_FILE:
        free(x->data_file);
        x->data_file = dup_ext_string(img, data, len, "data file", &err);
        return err;
    case QCOW2_EXT_FEATURE_NAMES:
        x->feature_names = data;
        x->feature_names_len = len;
        return 0;
    default:
        return 0;   /* bitmaps, encryption pointer, unknown: not needed to read */
    }
}

/* Walk the extensions in buf[start, end): type u32, length u32, data padded
 * to 8 bytes, until the end marker. */
static int parse_extensions(struct img *img, const uint8_t *buf, size_t start, size_t end,
                            struct qcow2_exts *x)
{
    size_t pos = start;
    while (pos < end) {
        if (end - pos < 8)
            return img_error(img, EINVAL, "truncated header extension at 0x%zx", pos);
        uint32_t type = get_be32(buf + pos);
        uint32_t len = get_be32(buf + pos + 4);
        pos += 8;
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - pos)
            return img_error(img, EINVAL, "header extension 0x%08x at 0x%zx (%u bytes) "
                             "runs past the header area", type, pos - 8, len);
        int r = take_extension(img, x, type, buf + pos, len);
        if (r < 0)
            return r;
        uint64_t padded = ((uint64_t)len + 7) & ~7ull;
        pos = padded > end - pos ? end : pos + padded;
    }
    return 0;
}

/* ---- features ---- */

/* Name of incompatible bit `bit` from the feature name table, printable. */
static bool feature_name(const struct qcow2_exts *x, unsigned bit, char *out, size_t outlen)
{
    for (uint32_t i = 0; i + QCOW2_FEATURE_NAME_ENTRY <= x->feature_names_len;
         i += QCOW2_FEATURE_NAME_ENTRY) {
        const uint8_t *e = x->feature_names + i;
        if (e[0] != 0 || e[1] != bit)   /* type 0 = incompatible */
            continue;
        size_t n = 0;
        for (size_t k = 0; k < QCOW2_FEATURE_NAME_ENTRY - 2 && e[2 + k] && n + 1 < outlen; k++)
            out[n++] = isprint(e[2 + k]) ? (char)e[2 + k] : '?';
        out[n] = 0;
        return n > 0;
    }
    return false;
}

static int refuse_unknown_features(struct img *img, uint64_t unknown, const struct qcow2_exts *x)
{
    char list[256] = "";
    size_t used = 0;
    for (unsigned bit = 0; bit < 64; bit++) {
        if (!(unknown & (1ull << bit)))
            continue;
        char name[QCOW2_FEATURE_NAME_ENTRY];
        if (!feature_name(x, bit, name, sizeof(name)))
            snprintf(name, sizeof(name), "bit %u", bit);
        int n = snprintf(list + used, sizeof(list) - used, "%s%s", used ? ", " : "", name);
        if (n < 0 || (size_t)n >= sizeof(list) - used)
            break;
        used += (size_t)n;
    }
    return img_error(img, ENOTSUP, "unsupported qcow2 feature(s): %s", list);
}

static int check_features(struct img *img, struct qcow2 *q, const struct qcow2_exts *x,
                          const struct img_open_opts *o)
{
    const struct qcow2_header *h = &q->h;
    if (h->incompatible & ~QCOW2_INCOMPAT_KNOWN)
        return refuse_unknown_features(img, h->incompatible & ~QCOW2_INCOMPAT_KNOWN, x);
    /* QEMU opens a corrupt image read-only only: writing could spread the damage. */
    if ((h->incompatible & QCOW2_INCOMPAT_CORRUPT) && o && o->read_write)
        return img_error(img, EROFS, "image is marked corrupt; it can only be opened read-only");
    if ((h->incompatible & QCOW2_INCOMPAT_EXTL2) &&
        h->cluster_bits < QCOW2_MIN_EXT_L2_CLUSTER_BITS)
        return img_error(img, EINVAL, "extended L2 entries need clusters of at least %u bytes",
                         1u << QCOW2_MIN_EXT_L2_CLUSTER_BITS);
    switch (h->compression_type) {
    case QCOW2_COMPRESSION_ZLIB: q->decompress = DECOMPRESS_DEFLATE_RAW; break;
    case QCOW2_COMPRESSION_ZSTD: q->decompress = DECOMPRESS_ZSTD; break;
    default:
        return img_error(img, ENOTSUP, "unknown compression type %u", h->compression_type);
    }
    /* The bit tells old readers they cannot read the clusters: it must be set
     * exactly when the type is not zlib. */
    bool bit = h->incompatible & QCOW2_INCOMPAT_COMPRESSION;
    if (bit != (h->compression_type != QCOW2_COMPRESSION_ZLIB))
        return img_error(img, EINVAL, "compression type %u does not match the compression "
                         "feature bit", h->compression_type);
    return 0;
}

/* ---- geometry and the L1 table ---- */

static void set_geometry(struct qcow2 *q)
{
    const struct qcow2_header *h = &q->h;
    q->geom.cluster_bits = h->cluster_bits;
    q->geom.extended_l2 = h->incompatible & QCOW2_INCOMPAT_EXTL2;
    q->geom.data_file = h->incompatible & QCOW2_INCOMPAT_DATA_FILE;
    q->geom.v2 = h->version == 2;
    q->cluster_size = 1u << h->cluster_bits;
    q->entry_bytes = q->geom.extended_l2 ? 16 : 8;
    q->l2_bits = h->cluster_bits - (q->geom.extended_l2 ? 4 : 3);
    q->unit_bits = h->cluster_bits - (q->geom.extended_l2 ? 5 : 0);
}

static int check_l1(struct img *img, const struct qcow2 *q, int64_t file_size)
{
    const struct qcow2_header *h = &q->h;
    unsigned shift = h->cluster_bits + q->l2_bits;    /* bytes covered per L1 entry */
    uint64_t needed = (h->size >> shift) + ((h->size & ((1ull << shift) - 1)) != 0);
    if (h->l1_size > QCOW2_MAX_L1_BYTES / 8)
        return img_error(img, EINVAL, "L1 table of %u entries is too large (limit %u MiB)",
                         h->l1_size, QCOW2_MAX_L1_BYTES >> 20);
    if (h->l1_size < needed)
        return img_error(img, EINVAL, "L1 table of %u entries does not cover the virtual "
                         "size (needs %llu)", h->l1_size, (unsigned long long)needed);
    if (h->l1_size == 0)
        return 0;
    if (h->l1_table_offset & (q->cluster_size - 1))
        return img_error(img, EINVAL, "L1 table offset 0x%llx is not cluster aligned",
                         (unsigned long long)h->l1_table_offset);
    uint64_t bytes = (uint64_t)h->l1_size * 8;
    if (h->l1_table_offset > (uint64_t)file_size || bytes > (uint64_t)file_size - h->l1_table_offset)
        return img_error(img, EINVAL, "L1 table at 0x%llx lies past the end of the file",
                         (unsigned long long)h->l1_table_offset);
    return 0;
}

static int load_l1(struct img *img, struct qcow2 *q)
{
    q->l1_size = q->h.l1_size;
    if (q->l1_size == 0)
        return 0;
    size_t bytes = (size_t)q->l1_size * 8;
    uint8_t *raw = malloc(bytes);
    q->l1 = malloc(bytes);
    if (!raw || !q->l1) {
        free(raw);
        return -ENOMEM;
    }
    int r = img_pread(img, img->fd, raw, bytes, q->h.l1_table_offset, "L1 table");
    for (uint32_t i = 0; r == 0 && i < q->l1_size; i++)
        q->l1[i] = get_be64(raw + (size_t)i * 8);
    free(raw);
    return r;
}

/* ---- backing and data files ---- */

static int load_backing_name(struct img *img, const struct qcow2_header *h,
                             const uint8_t *buf, size_t buflen)
{
    if (h->backing_file_offset == 0 || h->backing_file_size == 0)
        return 0;
    if (h->backing_file_size > QCOW2_MAX_BACKING_NAME)
        return img_error(img, EINVAL, "backing file name of %u bytes is too long (limit %d)",
                         h->backing_file_size, QCOW2_MAX_BACKING_NAME);
    /* The name lives in the first cluster, which buf holds (up to EOF). */
    if (h->backing_file_offset > buflen || h->backing_file_size > buflen - h->backing_file_offset)
        return img_error(img, EINVAL, "backing file name at 0x%llx lies outside the header "
                         "cluster or the file", (unsigned long long)h->backing_file_offset);
    img->backing_file = strndup((const char *)buf + h->backing_file_offset,
                                h->backing_file_size);
    return img->backing_file ? 0 : -ENOMEM;
}

static int open_data_file(struct img *img, struct qcow2 *q, const char *name)
{
    if (!q->geom.data_file) {
        q->data_fd = img->fd;
        q->data_size = q->file_size;
        return 0;
    }
    if (!name)
        return img_error(img, EINVAL, "image needs an external data file but names none");
    int fd = img_open_referenced(img, name, "data file", true, NULL);
    if (fd < 0)
        return fd;
    q->data_fd = fd;   /* a companion: the core closes it */
    int64_t size = img_fd_size(fd);
    if (size < 0)
        return img_error(img, (int)-size, "cannot size the data file '%s'", name);
    q->data_size = size;
    q->raw_data_file = q->h.autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    return 0;
}

/* ---- putting it together ---- */

/* The first cluster, or as much of it as the file holds: the fixed header,
 * the extensions and (usually) the backing file name live there. */
static int read_header_cluster(struct img *img, struct qcow2 *q, uint8_t **out, size_t *outlen)
{
    uint8_t head[QCOW2_V3_MIN_HEADER_LEN + 8];
    size_t n = (uint64_t)q->file_size < sizeof(head) ? (size_t)q->file_size : sizeof(head);
    int r = img_pread(img, img->fd, head, n, 0, "header");
    if (r < 0)
        return r;
    const char *why = NULL;
    if (qcow2_parse_header(head, n, &q->h, &why) < 0)
        return img_error(img, EINVAL, "%s", why);
    r = check_fixed(img, &q->h, q->file_size);
    if (r < 0)
        return r;
    uint64_t cluster = 1ull << q->h.cluster_bits;
    *outlen = cluster < (uint64_t)q->file_size ? (size_t)cluster : (size_t)q->file_size;
    *out = malloc(*outlen);
    if (!*out)
        return -ENOMEM;
    /* The fields stay those checked above; everything taken from this
     * buffer is bounded by its own length. */
    return img_pread(img, img->fd, *out, *outlen, 0, "header cluster");
}

static int apply_extensions(struct img *img, struct qcow2 *q, const struct img_open_opts *o,
                            const uint8_t *buf, size_t buflen)
{
    struct qcow2_exts x = { 0 };
    /* Extensions end where the backing name starts, or at the cluster end. */
    size_t end = buflen;
    if (q->h.backing_file_offset && q->h.backing_file_offset < end)
        end = (size_t)q->h.backing_file_offset;
    int r = parse_extensions(img, buf, q->h.header_length, end, &x);
    if (r == 0)
        r = check_features(img, q, &x, o);
    if (r == 0) {
        set_geometry(q);
        r = open_data_file(img, q, x.data_file);
    }
    if (r == 0) {
        img->backing_fmt = x.backing_fmt;
        x.backing_fmt = NULL;
        if (q->geom.data_file) {
            q->data_file_name = x.data_file;
            x.data_file = NULL;
        }
    }
    free(x.backing_fmt);
    free(x.data_file);
    return r;
}

int qcow2_load_header(struct img *img, struct qcow2 *q, const struct img_open_opts *o)
{
    q->file_size = img_fd_size(img->fd);
    if (q->file_size < 0)
        return img_error(img, (int)-q->file_size, "cannot size the file");
    uint8_t *buf = NULL;
    size_t buflen = 0;
    int r = read_header_cluster(img, q, &buf, &buflen);
    if (r == 0)
        r = apply_extensions(img, q, o, buf, buflen);
    if (r == 0)
        r = load_backing_name(img, &q->h, buf, buflen);
    free(buf);
    if (r == 0)
        r = check_l1(img, q, q->file_size);
    if (r == 0)
        r = load_l1(img, q);
    if (r < 0)
        return r;
    /* QEMU counts the virtual size in whole sectors and drops a partial one. */
    img->size = q->h.size & ~511ull;
    img->cluster_size = q->cluster_size;
    return 0;
}
