/* Creating VMDK disks the way qemu-img does (same options, same descriptor
 * text, same file names and layout), so that VMware tools and qemu take
 * them as their own:
 *   monolithicSparse      one hosted sparse file, descriptor embedded
 *   monolithicFlat        descriptor file + NAME-flat.vmdk
 *   twoGbMaxExtentSparse  descriptor file + NAME-s001.vmdk ... (2 GiB each)
 *   twoGbMaxExtentFlat    descriptor file + NAME-f001.vmdk ...
 *   streamOptimized       one file of compressed grains, written once
 * A hosted sparse extent gets all its grain tables up front, right after
 * each copy of the grain directory, as qemu lays it out; grains follow. */
#include "vmdk.h"

#include "core/bytes.h"
#include "core/format.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define GRAIN_SECTORS 128
#define GTES_PER_GT 512
#define DESC_OFFSET 1
#define DESC_SECTORS 20                       /* room for the embedded text */
#define SPLIT_BYTES (UINT64_C(2) << 30)       /* twoGbMaxExtent* */
#define NO_PARENT 0xffffffffu
#define DEFAULT_TOOLS "2147483647"

enum subformat { SUB_SPARSE, SUB_FLAT, SUB_SPLIT_SPARSE, SUB_SPLIT_FLAT, SUB_STREAM };
enum prealloc { PRE_OFF, PRE_FALLOC, PRE_FULL };

static const char *const subformat_names[] = {
    [SUB_SPARSE] = "monolithicSparse", [SUB_FLAT] = "monolithicFlat",
    [SUB_SPLIT_SPARSE] = "twoGbMaxExtentSparse", [SUB_SPLIT_FLAT] = "twoGbMaxExtentFlat",
    [SUB_STREAM] = "streamOptimized",
};

struct params {
    uint64_t size;             /* bytes, a multiple of 512 */
    enum subformat sub;
    const char *adapter;
    const char *hwversion;     /* NULL = "undefined" */
    bool compat6, zeroed_grain;
    const char *tools;
    enum prealloc prealloc;
    const char *backing;
    uint32_t parent_cid;
};

struct ctx {
    const char *path;
    char *err;
    size_t errlen;
    char **made;               /* extent files created, removed on failure */
    size_t n_made;
};

static int fail(struct ctx *c, int e, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct ctx *c, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return -e;
}

/* ---- options ---- */

/* As qemu-img lists them for vmdk, in the order of its Formatting line,
 * which shows compat6 and hwversion even when not given. */
const struct img_create_option vmdk_create_options[] = {
    { "size", "size", "Virtual disk size", NULL },
    { "adapter_type", "str",
      "Virtual adapter: ide (the default), lsilogic, buslogic or legacyESX", NULL },
    { "backing_file", "str", "File name of the parent image", NULL },
    { "backing_fmt", "str", "Format of the parent image, 'vmdk' if given", NULL },
    { "compat6", "bool (on/off)", "Write a VMDK version 6 image", "off" },
    { "hwversion", "str", "Virtual hardware version recorded in the descriptor", "undefined" },
    { "toolsversion", "str", "VMware Tools version recorded in the descriptor", NULL },
    { "subformat", "str",
      "VMDK layout: monolithicSparse (the default), monolithicFlat, twoGbMaxExtentSparse, "
      "twoGbMaxExtentFlat or streamOptimized", NULL },
    { "zeroed_grain", "bool (on/off)",
      "Use zeroed-grain table entries so that zero writes allocate nothing", NULL },
    { NULL, NULL, NULL, NULL },
};

static int parse_bool(struct ctx *c, const char *key, const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true"))
        *out = true;
    else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false"))
        *out = false;
    else
        return fail(c, EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
    return 0;
}

static int parse_subformat(struct ctx *c, const char *v, enum subformat *out)
{
    for (size_t i = 0; i < sizeof(subformat_names) / sizeof(*subformat_names); i++)
        if (strcmp(v, subformat_names[i]) == 0) {
            *out = (enum subformat)i;
            return 0;
        }
    return fail(c, EINVAL, "invalid parameter value: %s", v);
}

static int parse_adapter(struct ctx *c, const char *v)
{
    static const char *const known[] = { "ide", "buslogic", "lsilogic", "legacyESX" };
    for (size_t i = 0; i < sizeof(known) / sizeof(*known); i++)
        if (strcmp(v, known[i]) == 0)
            return 0;
    return fail(c, EINVAL, "invalid parameter value: %s", v);
}

static int parse_prealloc(struct ctx *c, const char *v, enum prealloc *out)
{
    if (!strcmp(v, "off"))
        *out = PRE_OFF;
    else if (!strcmp(v, "falloc"))
        *out = PRE_FALLOC;
    else if (!strcmp(v, "full"))
        *out = PRE_FULL;
    else
        return fail(c, EINVAL, "Invalid preallocation mode: '%s'", v);
    return 0;
}

static int parse_one(struct ctx *c, struct params *p, const char *k, const char *v)
{
    if (!strcmp(k, "subformat"))
        return parse_subformat(c, v, &p->sub);
    if (!strcmp(k, "adapter_type")) {
        p->adapter = v;
        return parse_adapter(c, v);
    }
    if (!strcmp(k, "hwversion")) {
        p->hwversion = strcmp(v, "undefined") ? v : NULL;
        return 0;
    }
    if (!strcmp(k, "toolsversion")) {
        p->tools = v;
        return 0;
    }
    if (!strcmp(k, "compat6"))
        return parse_bool(c, k, v, &p->compat6);
    if (!strcmp(k, "zeroed_grain"))
        return parse_bool(c, k, v, &p->zeroed_grain);
    if (!strcmp(k, "preallocation"))
        return parse_prealloc(c, v, &p->prealloc);
    /* Host file options of qemu's file driver: no meaning for the format. */
    if (!strcmp(k, "size") || !strcmp(k, "extent_size_hint") || !strcmp(k, "nocow"))
        return 0;
    return fail(c, EINVAL, "Invalid parameter '%s'", k);
}

static bool is_flat(enum subformat s)
{
    return s == SUB_FLAT || s == SUB_SPLIT_FLAT;
}

static int parse_params(struct ctx *c, const struct img_create_opts *o, struct params *p)
{
    memset(p, 0, sizeof(*p));
    p->adapter = "ide";
    p->tools = DEFAULT_TOOLS;
    p->parent_cid = NO_PARENT;
    p->backing = o->backing_file;
    for (size_t i = 0; i < o->n_opts; i++) {
        int r = parse_one(c, p, o->opts[i].key, o->opts[i].value);
        if (r < 0)
            return r;
    }
    if (p->compat6 && p->hwversion)
        return fail(c, EINVAL, "compat6 cannot be enabled with hwversion set");
    if (p->prealloc != PRE_OFF && !is_flat(p->sub))
        return fail(c, ENOTSUP, "preallocation=%s is only supported for the flat subformats",
                    p->prealloc == PRE_FULL ? "full" : "falloc");
    if (o->backing_fmt && strcmp(o->backing_fmt, "vmdk") != 0)
        return fail(c, EINVAL, "backing_fmt must be 'vmdk' (a VMDK delta's parent is a VMDK)");
    if (p->backing && is_flat(p->sub))
        return fail(c, ENOTSUP, "a flat VMDK has no unallocated grains, so a backing file "
                    "would never be read; use a sparse subformat");
    if (o->size > VMDK_MAX_DISK_BYTES)
        return fail(c, EFBIG, "a size of %llu bytes is too large",
                    (unsigned long long)o->size);
    p->size = (o->size + VMDK_SECTOR - 1) & ~(uint64_t)(VMDK_SECTOR - 1);
    return 0;
}

/* ---- the parent ---- */

static char *folder_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    return strndup(path, slash == path ? 1 : (size_t)(slash - path));
}

/* A delta records the parent's CID, so the parent must open as a VMDK. */
static int read_parent_cid(struct ctx *c, struct params *p)
{
    char *dir = folder_of(c->path), *where = NULL;
    if (!dir || (p->backing[0] == '/' ? !(where = strdup(p->backing))
                                      : asprintf(&where, "%s/%s", dir, p->backing) < 0)) {
        free(dir);
        return fail(c, ENOMEM, "out of memory");
    }
    free(dir);
    struct img_open_opts o = { .format = "vmdk", .force_share = true, .no_backing = true,
                               .allow_outside = true };
    struct img *parent;
    char err[IMG_ERRMSG_MAX];
    int r = img_open(where, &o, &parent, err, sizeof(err));
    free(where);
    if (r < 0)
        return fail(c, -r, "Could not open backing file '%s' as a VMDK: %s", p->backing, err);
    const struct vmdk *v = parent->priv;
    p->parent_cid = v->desc.has_cid ? v->desc.cid : NO_PARENT;
    img_close(parent);
    return 0;
}

/* ---- names ---- */

/* NAME.vmdk -> NAME + ".vmdk": extent files are NAME-s001.vmdk etc. */
static void split_name(const char *path, char *stem, size_t stem_len, const char **suffix)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    *suffix = dot && dot != base ? dot : "";
    snprintf(stem, stem_len, "%.*s", (int)(*suffix[0] ? dot - base : (long)strlen(base)), base);
}

/* The extent file names of the plan (basenames), NULL for monolithic. */
static int extent_name(struct ctx *c, enum subformat sub, size_t idx, char *out, size_t len)
{
    char stem[VMDK_MAX_NAME];
    const char *suffix;
    split_name(c->path, stem, sizeof(stem), &suffix);
    int n;
    if (sub == SUB_FLAT)
        n = snprintf(out, len, "%s-flat%s", stem, suffix);
    else
        n = snprintf(out, len, "%s-%c%03zu%s", stem, sub == SUB_SPLIT_FLAT ? 'f' : 's',
                     idx + 1, suffix);
    if (n < 0 || (size_t)n >= len)
        return fail(c, ENAMETOOLONG, "extent file name too long");
    return 0;
}

/* ---- the descriptor ---- */

static uint32_t random_cid(void)
{
    uint32_t cid = 0;
    while (cid == 0 || cid == NO_PARENT)
        if (getrandom(&cid, sizeof(cid), 0) != sizeof(cid))
            cid = (uint32_t)rand();
    return cid;
}

static const char *hwversion_of(const struct params *p)
{
    return p->hwversion ? p->hwversion : p->compat6 ? "6" : "4";
}

/* Text as qemu-img writes it; `extents` holds the extent lines. */
static char *descriptor_text(const struct params *p, const char *extents)
{
    unsigned heads = strcmp(p->adapter, "ide") == 0 ? 16 : 255;
    uint64_t cylinders = p->size / ((uint64_t)heads * 63 * VMDK_SECTOR);
    char parent_line[VMDK_MAX_NAME + 32] = "";
    if (p->backing)
        snprintf(parent_line, sizeof(parent_line), "parentFileNameHint=\"%s\"", p->backing);
    char *text;
    int n = asprintf(&text,
                     "# Disk DescriptorFile\n"
                     "version=1\n"
                     "CID=%" PRIx32 "\n"
                     "parentCID=%" PRIx32 "\n"
                     "createType=\"%s\"\n"
                     "%s\n"
                     "# Extent description\n"
                     "%s"
                     "\n"
                     "# The Disk Data Base\n"
                     "#DDB\n"
                     "\n"
                     "ddb.virtualHWVersion = \"%s\"\n"
                     "ddb.geometry.cylinders = \"%" PRIu64 "\"\n"
                     "ddb.geometry.heads = \"%u\"\n"
                     "ddb.geometry.sectors = \"63\"\n"
                     "ddb.adapterType = \"%s\"\n"
                     "ddb.toolsVersion = \"%s\"\n",
                     random_cid(), p->parent_cid, subformat_names[p->sub], parent_line,
                     extents, hwversion_of(p), cylinders, heads, p->adapter, p->tools);
    return n < 0 ? NULL : text;
}

/* ---- files ---- */

static int open_new(struct ctx *c, const char *path, bool is_extent)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail(c, errno, "Could not create '%s': %s", path, strerror(errno));
    char *copy = is_extent ? strdup(path) : NULL;
    char **grown = copy ? realloc(c->made, (c->n_made + 1) * sizeof(*c->made)) : NULL;
    if (is_extent && !grown) {
        free(copy);
        close(fd);
        unlink(path);
        return fail(c, ENOMEM, "out of memory");
    }
    if (is_extent) {
        c->made = grown;
        c->made[c->n_made++] = copy;
    }
    return fd;
}

static int write_at(struct ctx *c, int fd, const void *buf, size_t len, uint64_t off,
                    const char *what)
{
    int r = img_write_full(fd, buf, len, off);
    return r < 0 ? fail(c, -r, "Could not write the %s: %s", what, strerror(-r)) : 0;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

/* The header of a hosted sparse extent of `sectors`, qemu's layout. */
static void sparse_layout(const struct params *p, uint64_t sectors, bool stream,
                          struct vmdk_sparse_header *h, uint64_t *gd_sectors, uint64_t *gts)
{
    memset(h, 0, sizeof(*h));
    uint64_t gt_sectors = GTES_PER_GT * 4 / VMDK_SECTOR;
    *gts = div_up(div_up(sectors, GRAIN_SECTORS), GTES_PER_GT);
    *gd_sectors = div_up(*gts * 4, VMDK_SECTOR);
    h->version = stream ? 3 : p->zeroed_grain ? 2 : 1;
    h->flags = VMDK_FLAG_NL_DETECT | (p->zeroed_grain ? VMDK_FLAG_ZERO_GRAIN : 0);
    h->capacity = sectors;
    h->grain_sectors = GRAIN_SECTORS;
    h->desc_offset = DESC_OFFSET;
    h->desc_size = DESC_SECTORS;
    h->gtes_per_gt = GTES_PER_GT;
    if (stream) {
        h->flags |= VMDK_FLAG_COMPRESSED | VMDK_FLAG_MARKERS;
        h->compress_algorithm = VMDK_COMPRESS_DEFLATE;
        h->gd_offset = VMDK_GD_AT_END;
        h->grain_offset = div_up(DESC_OFFSET + DESC_SECTORS, GRAIN_SECTORS) * GRAIN_SECTORS;
        return;
    }
    h->flags |= VMDK_FLAG_RGD;
    h->rgd_offset = DESC_OFFSET + DESC_SECTORS;
    h->gd_offset = h->rgd_offset + *gd_sectors + *gts * gt_sectors;
    h->grain_offset = div_up(h->gd_offset + *gd_sectors + *gts * gt_sectors, GRAIN_SECTORS) *
                      GRAIN_SECTORS;
}

/* A directory whose entries point at consecutive zeroed tables. */
static int write_gd(struct ctx *c, int fd, uint64_t at, uint64_t gd_sectors, uint64_t gts)
{
    if (gd_sectors == 0)
        return 0;
    uint8_t *gd = calloc(gd_sectors, VMDK_SECTOR);
    if (!gd)
        return fail(c, ENOMEM, "out of memory");
    uint64_t gt_sectors = GTES_PER_GT * 4 / VMDK_SECTOR;
    for (uint64_t i = 0; i < gts; i++)
        put_le32(gd + 4 * i, (uint32_t)(at + gd_sectors + i * gt_sectors));
    int r = write_at(c, fd, gd, gd_sectors * VMDK_SECTOR, at * VMDK_SECTOR, "grain directory");
    free(gd);
    return r;
}

static int write_header_and_desc(struct ctx *c, int fd, const struct vmdk_sparse_header *h,
                                 const char *desc)
{
    uint8_t head[VMDK_HEADER_SIZE];
    vmdk_sparse_header_encode(head, h);
    int r = write_at(c, fd, head, sizeof(head), 0, "header");
    if (r == 0 && desc) {
        if (strlen(desc) > DESC_SECTORS * VMDK_SECTOR)
            return fail(c, ENAMETOOLONG, "the descriptor does not fit in %d sectors",
                        DESC_SECTORS);
        r = write_at(c, fd, desc, strlen(desc), DESC_OFFSET * VMDK_SECTOR, "descriptor");
    }
    return r;
}

/* A hosted sparse extent; `desc` is embedded when not NULL. */
static int write_sparse_file(struct ctx *c, int fd, const struct params *p, uint64_t sectors,
                             const char *desc)
{
    struct vmdk_sparse_header h;
    uint64_t gd_sectors, gts;
    bool stream = p->sub == SUB_STREAM;
    sparse_layout(p, sectors, stream, &h, &gd_sectors, &gts);
    int r = write_header_and_desc(c, fd, &h, desc);
    if (r < 0)
        return r;
    if (stream) {
        /* An empty stream: no tables, an all-empty directory, the footer. */
        size_t len;
        uint8_t *tail = vmdk_stream_tail(&h, NULL, (uint32_t)gts, h.grain_offset * VMDK_SECTOR,
                                         &len);
        if (!tail)
            return fail(c, ENOMEM, "out of memory");
        r = write_at(c, fd, tail, len, h.grain_offset * VMDK_SECTOR, "stream footer");
        free(tail);
        return r;
    }
    if (ftruncate(fd, (off_t)(h.grain_offset * VMDK_SECTOR)) < 0)
        return fail(c, errno, "Could not size the file: %s", strerror(errno));
    r = write_gd(c, fd, h.rgd_offset, gd_sectors, gts);
    return r < 0 ? r : write_gd(c, fd, h.gd_offset, gd_sectors, gts);
}

static int zero_fill(struct ctx *c, int fd, uint64_t len)
{
    enum { CHUNK = 1 << 20 };
    uint8_t *z = calloc(1, CHUNK);
    if (!z)
        return fail(c, ENOMEM, "out of memory");
    int r = 0;
    for (uint64_t off = 0; off < len && r == 0; off += CHUNK)
        r = write_at(c, fd, z, len - off < CHUNK ? len - off : CHUNK, off, "flat extent");
    free(z);
    return r;
}

static int write_flat_file(struct ctx *c, int fd, const struct params *p, uint64_t bytes)
{
    if (ftruncate(fd, (off_t)bytes) < 0)
        return fail(c, errno, "Could not size the flat extent: %s", strerror(errno));
    if (p->prealloc == PRE_FALLOC && bytes && (errno = posix_fallocate(fd, 0, (off_t)bytes)))
        return fail(c, errno, "Could not preallocate the flat extent: %s", strerror(errno));
    return p->prealloc == PRE_FULL ? zero_fill(c, fd, bytes) : 0;
}

static int finish_file(struct ctx *c, int fd, int r)
{
    if (r == 0 && fsync(fd) < 0)
        r = fail(c, errno, "Could not sync: %s", strerror(errno));
    close(fd);
    return r;
}

/* ---- the subformats ---- */

static int create_monolithic_sparse(struct ctx *c, const struct params *p)
{
    const char *base = strrchr(c->path, '/');
    base = base ? base + 1 : c->path;
    char *extents, *desc = NULL;
    if (asprintf(&extents, "RW %" PRIu64 " SPARSE \"%s\"\n", p->size / VMDK_SECTOR, base) < 0)
        return fail(c, ENOMEM, "out of memory");
    desc = descriptor_text(p, extents);
    free(extents);
    if (!desc)
        return fail(c, ENOMEM, "out of memory");
    int fd = open_new(c, c->path, false);
    int r = fd < 0 ? fd : write_sparse_file(c, fd, p, p->size / VMDK_SECTOR, desc);
    free(desc);
    return fd < 0 ? fd : finish_file(c, fd, r);
}

/* One extent file of a descriptor-file disk, in the descriptor's folder. */
static int create_extent(struct ctx *c, const struct params *p, const char *name,
                         uint64_t bytes)
{
    char *dir = folder_of(c->path), *path = NULL;
    if (!dir || asprintf(&path, "%s/%s", dir, name) < 0) {
        free(dir);
        return fail(c, ENOMEM, "out of memory");
    }
    free(dir);
    int fd = open_new(c, path, true);
    free(path);
    if (fd < 0)
        return fd;
    int r = is_flat(p->sub) ? write_flat_file(c, fd, p, bytes)
                            : write_sparse_file(c, fd, p, bytes / VMDK_SECTOR, NULL);
    return finish_file(c, fd, r);
}

static int append_line(struct ctx *c, char **lines, const struct params *p, uint64_t bytes,
                       const char *name)
{
    char *more;
    int n = is_flat(p->sub)
        ? asprintf(&more, "%sRW %" PRIu64 " FLAT \"%s\" 0\n", *lines, bytes / VMDK_SECTOR, name)
        : asprintf(&more, "%sRW %" PRIu64 " SPARSE \"%s\"\n", *lines, bytes / VMDK_SECTOR, name);
    if (n < 0)
        return fail(c, ENOMEM, "out of memory");
    free(*lines);
    *lines = more;
    return 0;
}

static int write_descriptor_file(struct ctx *c, const struct params *p, const char *lines)
{
    char *desc = descriptor_text(p, lines);
    if (!desc)
        return fail(c, ENOMEM, "out of memory");
    int fd = open_new(c, c->path, false);
    int r = fd < 0 ? fd : write_at(c, fd, desc, strlen(desc), 0, "descriptor");
    free(desc);
    return fd < 0 ? fd : finish_file(c, fd, r);
}

static int create_with_descriptor_file(struct ctx *c, const struct params *p)
{
    bool split = p->sub == SUB_SPLIT_FLAT || p->sub == SUB_SPLIT_SPARSE;
    uint64_t chunk = split ? SPLIT_BYTES : p->size;
    char *lines = strdup("");
    if (!lines)
        return fail(c, ENOMEM, "out of memory");
    int r = 0;
    size_t idx = 0;
    /* A disk of size 0 still gets one (empty) extent, as with qemu-img. */
    for (uint64_t off = 0; r == 0 && (off < p->size || idx == 0); off += chunk, idx++) {
        uint64_t bytes = p->size - off < chunk ? p->size - off : chunk;
        char name[VMDK_MAX_NAME];
        r = extent_name(c, p->sub, idx, name, sizeof(name));
        if (r == 0)
            r = create_extent(c, p, name, bytes);
        if (r == 0)
            r = append_line(c, &lines, p, bytes, name);
    }
    if (r == 0)
        r = write_descriptor_file(c, p, lines);
    free(lines);
    return r;
}

static void forget_made(struct ctx *c, bool remove)
{
    for (size_t i = 0; i < c->n_made; i++) {
        if (remove)
            unlink(c->made[i]);
        free(c->made[i]);
    }
    free(c->made);
}

int vmdk_create(const char *path, const struct img_create_opts *o, char *err, size_t errlen)
{
    struct ctx c = { .path = path, .err = err, .errlen = errlen };
    struct params p;
    int r = parse_params(&c, o, &p);
    if (r == 0 && p.backing)
        r = read_parent_cid(&c, &p);
    if (r == 0) {
        if (p.sub == SUB_SPARSE || p.sub == SUB_STREAM)
            r = create_monolithic_sparse(&c, &p);
        else
            r = create_with_descriptor_file(&c, &p);
    }
    forget_made(&c, r < 0);
    return r;
}
