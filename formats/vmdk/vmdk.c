/* vmdk: VMware virtual disks, read side.  A disk is a list of extents
 * (sparse grain files, flat files, zero ranges) named by a text
 * descriptor, which is either a file of its own or embedded in a monolithic
 * sparse file.  Virtual size = the sum of the extents. */
#include "vmdk.h"

#include "core/format.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_GRAIN_BYTES 65536
#define NO_PARENT_CID 0xffffffffu

extern const struct img_format img_format_vmdk;

static int vmdk_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)filename;
    if (vmdk_is_sparse_magic(head, len) || vmdk_is_cowd_magic(head, len))
        return 100;
    return vmdk_desc_probe(head, len);
}

/* ---- descriptors ---- */

static int parse_desc(struct img *img, struct vmdk *v, const char *text, size_t len,
                      bool want_extents)
{
    char err[IMG_ERRMSG_MAX];
    int r = vmdk_desc_parse(text, len, want_extents, &v->desc, err, sizeof(err));
    if (r < 0)
        return img_error(img, -r, "%s", err);
    return 0;
}

static int read_text(struct img *img, uint64_t off, uint64_t len, char **out)
{
    char *buf = malloc(len + 1);
    if (!buf)
        return img_error(img, ENOMEM, "no memory for the descriptor");
    int r = img_pread(img, img->fd, buf, len, off, "descriptor");
    if (r < 0) {
        free(buf);
        return r;
    }
    buf[len] = '\0';
    *out = buf;
    return 0;
}

/* The descriptor inside a sparse file: desc_offset / desc_size sectors. */
static int read_embedded_desc(struct img *img, const struct vmdk_sparse_header *h,
                              uint64_t file_size, char **out)
{
    if (h->desc_offset == 0)
        return img_error(img, EINVAL, "sparse file with no embedded descriptor: it is one "
                         "extent of a multi-file disk; open the disk's descriptor instead");
    if (h->desc_size == 0 || h->desc_size > VMDK_MAX_DESC_BYTES / VMDK_SECTOR)
        return img_error(img, EINVAL, "embedded descriptor of %llu sectors is not plausible",
                         (unsigned long long)h->desc_size);
    if (h->desc_offset > file_size / VMDK_SECTOR ||
        (h->desc_offset + h->desc_size) * VMDK_SECTOR > file_size)
        return img_error(img, EINVAL, "embedded descriptor at sector %llu lies past the end of "
                         "the file", (unsigned long long)h->desc_offset);
    return read_text(img, h->desc_offset * VMDK_SECTOR, h->desc_size * VMDK_SECTOR, out);
}

static int check_desc(struct img *img, const struct vmdk_desc *d)
{
    if (d->create_type[0] == '\0')
        return img_error(img, EINVAL, "descriptor has no createType: not a VMDK descriptor");
    if (!vmdk_create_type_supported(d->create_type))
        return img_error(img, ENOTSUP, "unsupported VMDK createType '%s'", d->create_type);
    if (d->n_extents == 0)
        return img_error(img, EINVAL, "descriptor lists no extents");
    return 0;
}

/* ---- extents ---- */

static int open_flat(struct img *img, struct vmdk_extent *e, const struct vmdk_desc_extent *d)
{
    e->fd = img_open_referenced(img, d->file, "extent", true, NULL);
    if (e->fd < 0)
        return e->fd;
    int64_t size = img_fd_size(e->fd);
    if (size < 0)
        return img_error(img, (int)-size, "extent '%s': cannot get the size", d->file);
    e->file_size = (uint64_t)size;
    e->flat_off = d->flat_offset * VMDK_SECTOR;
    e->len = d->sectors * VMDK_SECTOR;
    return 0;
}

static int open_sparse_extent(struct img *img, struct vmdk_extent *e,
                              const struct vmdk_desc_extent *d)
{
    e->fd = img_open_referenced(img, d->file, "extent", true, NULL);
    if (e->fd < 0)
        return e->fd;
    int r = vmdk_sparse_open(img, e->fd, e->name, &e->sp);
    if (r < 0)
        return r;
    /* Like QEMU, the extent spans its header's capacity; the descriptor's
     * count is only a repetition of it. */
    e->len = e->sp->size;
    return 0;
}

static int open_one_extent(struct img *img, struct vmdk_extent *e,
                           const struct vmdk_desc_extent *d)
{
    e->type = d->type;
    e->access = d->access;
    e->fd = -1;
    if (d->file && !(e->name = strdup(d->file)))
        return img_error(img, ENOMEM, "out of memory");
    /* NOACCESS: VMware refuses the range; we have no bytes to give and
     * show zeros rather than fail every reader of the disk. */
    if (d->type == VMDK_EXT_ZERO || d->access == VMDK_NOACCESS) {
        e->type = VMDK_EXT_ZERO;
        e->len = d->sectors * VMDK_SECTOR;
        return 0;
    }
    if (d->type == VMDK_EXT_FLAT)
        return open_flat(img, e, d);
    return open_sparse_extent(img, e, d);
}

static int open_extents(struct img *img, struct vmdk *v)
{
    const struct vmdk_desc *d = &v->desc;
    v->ext = calloc(d->n_extents, sizeof(*v->ext));
    if (!v->ext)
        return img_error(img, ENOMEM, "out of memory");
    uint64_t total = 0;
    for (size_t i = 0; i < d->n_extents; i++) {
        struct vmdk_extent *e = &v->ext[v->n_ext++];
        int r = open_one_extent(img, e, &d->extents[i]);
        if (r < 0)
            return r;
        e->start = total;
        total += e->len;
        if (total > VMDK_MAX_DISK_BYTES)
            return img_error(img, EFBIG, "extents add up to more than %llu bytes",
                             (unsigned long long)VMDK_MAX_DISK_BYTES);
    }
    img->size = total;
    return 0;
}

/* ---- the three kinds of top file ---- */

static int open_from_desc_text(struct img *img, struct vmdk *v, const char *text, size_t len)
{
    int r = parse_desc(img, v, text, len, true);
    if (r == 0)
        r = check_desc(img, &v->desc);
    if (r == 0)
        r = open_extents(img, v);
    return r;
}

static int open_descriptor_file(struct img *img, struct vmdk *v, uint64_t file_size)
{
    if (file_size > VMDK_MAX_DESC_BYTES)
        return img_error(img, EFBIG, "%llu bytes is too large for a VMDK descriptor",
                         (unsigned long long)file_size);
    char *text;
    int r = read_text(img, 0, file_size, &text);
    if (r < 0)
        return r;
    r = open_from_desc_text(img, v, text, file_size);
    free(text);
    return r;
}

/* A monolithic sparse file: one extent, itself, described by its embedded
 * descriptor.  A sparse header of capacity 0 instead carries a descriptor
 * that names other extents (QEMU reads it so). */
static int open_sparse_file(struct img *img, struct vmdk *v, const uint8_t *head,
                            uint64_t file_size)
{
    struct vmdk_sparse_header h;
    char *text;
    vmdk_sparse_header_decode(head, &h);
    int r = read_embedded_desc(img, &h, file_size, &text);
    if (r < 0)
        return r;
    if (h.capacity == 0) {
        r = open_from_desc_text(img, v, text, strlen(text));
        free(text);
        return r;
    }
    r = parse_desc(img, v, text, strlen(text), false);
    free(text);
    if (r < 0)
        return r;
    /* QEMU needs the CID too; an extent of a split disk carries an empty
     * descriptor area. */
    if (!v->desc.has_cid)
        return img_error(img, EINVAL, "sparse file with no embedded descriptor (no CID): it "
                         "is one extent of a multi-file disk; open the disk's descriptor "
                         "instead");
    if (!(v->ext = calloc(1, sizeof(*v->ext))))
        return img_error(img, ENOMEM, "out of memory");
    struct vmdk_extent *e = &v->ext[0];
    v->n_ext = 1;
    e->type = VMDK_EXT_SPARSE;
    e->fd = img->fd;
    if ((r = vmdk_sparse_open(img, img->fd, "sparse extent", &e->sp)) < 0)
        return r;
    e->len = e->sp->size;
    img->size = e->len;
    return 0;
}

static int set_chain_fields(struct img *img, struct vmdk *v)
{
    img->cluster_size = DEFAULT_GRAIN_BYTES;
    for (size_t i = 0; i < v->n_ext; i++)
        if (v->ext[i].sp) {
            img->cluster_size = (uint32_t)v->ext[i].sp->grain_bytes;
            break;
        }
    if (img->cluster_size < VMDK_SECTOR)
        img->cluster_size = VMDK_SECTOR;
    if (!v->desc.parent_hint)
        return 0;
    img->backing_file = strdup(v->desc.parent_hint);
    img->backing_fmt = strdup("vmdk");   /* a VMDK delta's parent is a VMDK */
    if (!img->backing_file || !img->backing_fmt)
        return img_error(img, ENOMEM, "out of memory");
    return 0;
}

static int vmdk_open(struct img *img, const struct img_open_opts *o)
{
    (void)o;
    struct vmdk *v = calloc(1, sizeof(*v));
    if (!v)
        return img_error(img, ENOMEM, "out of memory");
    pthread_mutex_init(&v->cid_lock, NULL);
    img->priv = v;   /* the core calls close on failure too */
    int64_t size = img_fd_size(img->fd);
    if (size < 0)
        return img_error(img, (int)-size, "cannot get the size: %s", strerror((int)-size));
    uint8_t head[VMDK_HEADER_SIZE];
    size_t n = (uint64_t)size < sizeof(head) ? (size_t)size : sizeof(head);
    int r = img_pread(img, img->fd, head, n, 0, "header");
    if (r < 0)
        return r;
    if (vmdk_is_sparse_magic(head, n)) {
        if (n < VMDK_HEADER_SIZE)
            return img_error(img, EINVAL, "too small to hold a sparse extent header");
        r = open_sparse_file(img, v, head, (uint64_t)size);
    } else if (vmdk_is_cowd_magic(head, n)) {
        r = img_error(img, ENOTSUP, "ESX COWD sparse extents (VMDK3) are not supported");
    } else {
        r = open_descriptor_file(img, v, (uint64_t)size);
    }
    if (r == 0 && img->size == 0)
        r = img_error(img, EINVAL, "the disk has no bytes");
    if (r == 0)
        r = set_chain_fields(img, v);
    return r;
}

static void vmdk_close(struct img *img)
{
    struct vmdk *v = img->priv;
    if (!v)
        return;
    /* A stream written since the last flush still lacks its tables and
     * footer; close has no way to report a failure but the message. */
    for (size_t i = 0; img->read_write && i < v->n_ext; i++)
        if (v->ext[i].sp && v->ext[i].sp->stream)
            vmdk_stream_finish(img, v->ext[i].sp);
    for (size_t i = 0; i < v->n_ext; i++) {
        vmdk_sparse_close(v->ext[i].sp);
        free(v->ext[i].name);
    }
    free(v->ext);
    vmdk_desc_free(&v->desc);
    pthread_mutex_destroy(&v->cid_lock);
    free(v);
    img->priv = NULL;
}

/* ---- map and read ---- */

/* The extent holding guest byte `off` (off < img->size). */
static struct vmdk_extent *find_extent(struct vmdk *v, uint64_t off)
{
    size_t lo = 0, hi = v->n_ext;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->ext[mid].start <= off)
            lo = mid;
        else
            hi = mid;
    }
    return &v->ext[lo];
}

/* A flat file is the disk itself, so its holes are holes of the disk (QEMU
 * reports them as data+zero; we say ZERO, which copies sparsely).  Bytes
 * past its end are missing, not zeros (QEMU reads zeros): they map as data
 * there, and reading them fails. */
static void map_flat(const struct vmdk_extent *e, uint64_t rel, uint64_t n,
                     struct img_extent *ext)
{
    uint64_t host = e->flat_off + rel;
    uint64_t have = host < e->file_size ? e->file_size - host : 0;
    ext->len = n < have ? n : have;
    ext->kind = IMG_ZERO;
    if (have == 0) {
        ext->len = n;
        ext->kind = IMG_DATA;
        ext->fd = e->fd;
        ext->host_off = host;
        return;
    }
    uint64_t end = host + ext->len;
    off_t data = lseek(e->fd, (off_t)host, SEEK_DATA);
    if (data >= 0 || errno == ENXIO) {
        if (data < 0 || (uint64_t)data >= end)
            return;
        if ((uint64_t)data > host) {
            ext->len = (uint64_t)data - host;
            return;
        }
        off_t hole = lseek(e->fd, (off_t)host, SEEK_HOLE);
        if (hole > (off_t)host && (uint64_t)hole < end)
            ext->len = (uint64_t)hole - host;
    }
    ext->kind = IMG_DATA;
    ext->fd = e->fd;
    ext->host_off = host;
}

static int check_parent_cid(struct img *img, struct vmdk *v)
{
    pthread_mutex_lock(&v->cid_lock);
    if (v->cid_state == 0) {
        const struct img *parent = img->backing;
        const struct vmdk *pv = parent->fmt == &img_format_vmdk ? parent->priv : NULL;
        bool comparable = pv && v->desc.has_parent_cid && pv->desc.has_cid;
        v->cid_state = !comparable || pv->desc.cid == v->desc.parent_cid ? 1 : -1;
    }
    int state = v->cid_state;
    pthread_mutex_unlock(&v->cid_lock);
    if (state > 0)
        return 0;
    const struct vmdk *pv = img->backing->priv;
    return img_error(img, EIO, "parentCID %08x does not match the CID %08x of the parent %s: "
                     "the parent changed after this delta was made", v->desc.parent_cid,
                     pv->desc.cid, img->backing->path);
}

static int vmdk_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    struct vmdk *v = img->priv;
    struct vmdk_extent *e = find_extent(v, off);
    uint64_t rel = off - e->start;
    uint64_t n = e->len - rel < len ? e->len - rel : len;
    ext->off = off;
    ext->fd = -1;
    int r = 0;
    switch (e->type) {
    case VMDK_EXT_ZERO:
        ext->kind = IMG_ZERO;
        ext->len = n;
        break;
    case VMDK_EXT_FLAT:
        map_flat(e, rel, n, ext);
        break;
    case VMDK_EXT_SPARSE:
        r = vmdk_sparse_map(img, e->sp, rel, n, ext);
        break;
    }
    if (r == 0 && ext->kind == IMG_UNALLOCATED && img->backing)
        r = check_parent_cid(img, v);
    return r;
}

static int vmdk_read(struct img *img, void *buf, size_t len, uint64_t off)
{
    struct vmdk *v = img->priv;
    struct vmdk_extent *e = find_extent(v, off);
    if (e->type != VMDK_EXT_SPARSE || off - e->start + len > e->len)
        return img_error(img, EIO, "read of 0x%llx+0x%zx is not within one compressed extent",
                         (unsigned long long)off, len);
    return vmdk_sparse_read(img, e->sp, buf, len, off - e->start);
}

/* ---- write side ---- */

static int write_flat(struct img *img, struct vmdk_extent *e, const uint8_t *buf, uint64_t len,
                      uint64_t rel)
{
    int r = img_write_full(e->fd, buf, len, e->flat_off + rel);
    if (r < 0)
        return img_error(img, -r, "%s: write at 0x%llx: %s", e->name,
                         (unsigned long long)(e->flat_off + rel), strerror(-r));
    if (e->file_size < e->flat_off + rel + len)
        e->file_size = e->flat_off + rel + len;
    return 0;
}

/* Holes where the caller allows it (a hole in a flat file reads as zeros
 * and maps as ZERO); allocated zeros otherwise; plain zero writes where
 * the file system has neither. */
static int zero_flat(struct img *img, struct vmdk_extent *e, uint64_t len, uint64_t rel,
                     bool may_unmap)
{
    uint64_t host = e->flat_off + rel;
    if (host + len > e->file_size) {
        /* Bytes past the end would read as missing: extend the file. */
        if (ftruncate(e->fd, (off_t)(host + len)) < 0)
            return img_error(img, errno, "%s: cannot extend to 0x%llx: %s", e->name,
                             (unsigned long long)(host + len), strerror(errno));
        uint64_t old = e->file_size;
        e->file_size = host + len;
        if (host >= old)
            return 0;   /* all of it new: zeros already */
    }
    int mode = may_unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE;
    if (fallocate(e->fd, mode, (off_t)host, (off_t)len) == 0)
        return 0;
    enum { CHUNK = 1 << 20 };
    uint8_t *z = calloc(1, CHUNK);
    int r = z ? 0 : -ENOMEM;
    for (uint64_t done = 0; r == 0 && done < len; done += CHUNK)
        r = img_write_full(e->fd, z, len - done < CHUNK ? len - done : CHUNK, host + done);
    free(z);
    if (r < 0)
        return img_error(img, -r, "%s: zeroing at 0x%llx: %s", e->name,
                         (unsigned long long)host, strerror(-r));
    return 0;
}

static int check_extent_writable(struct img *img, const struct vmdk_extent *e)
{
    if (!img->read_write)
        return img_error(img, EROFS, "the image is open read-only");
    if (e->type == VMDK_EXT_ZERO || e->access != VMDK_RW)
        return img_error(img, EROFS, "extent '%s' at guest offset 0x%llx is not writable "
                         "(%s)", e->name ? e->name : "(zero)", (unsigned long long)e->start,
                         e->type == VMDK_EXT_ZERO ? "a ZERO extent" : "not RW");
    return 0;
}

/* buf NULL = zeros. */
static int write_piece(struct img *img, struct vmdk_extent *e, const uint8_t *buf,
                       uint64_t len, uint64_t rel, bool may_unmap)
{
    int r = check_extent_writable(img, e);
    if (r < 0)
        return r;
    if (e->type == VMDK_EXT_FLAT)
        return buf ? write_flat(img, e, buf, len, rel) : zero_flat(img, e, len, rel, may_unmap);
    if (buf)
        return vmdk_sparse_write(img, e->sp, e->start, buf, len, rel);
    return vmdk_sparse_zero(img, e->sp, e->start, len, rel);
}

static int write_across(struct img *img, const uint8_t *buf, uint64_t len, uint64_t off,
                        bool may_unmap)
{
    struct vmdk *v = img->priv;
    if (off > img->size || len > img->size - off)
        return img_error(img, EINVAL, "write of 0x%llx+0x%llx passes the end of the disk",
                         (unsigned long long)off, (unsigned long long)len);
    while (len > 0) {
        struct vmdk_extent *e = find_extent(v, off);
        uint64_t rel = off - e->start;
        uint64_t n = e->len - rel < len ? e->len - rel : len;
        int r = write_piece(img, e, buf, n, rel, may_unmap);
        if (r < 0)
            return r;
        off += n;
        len -= n;
        if (buf)
            buf += n;
    }
    return 0;
}

static int vmdk_write(struct img *img, const void *buf, size_t len, uint64_t off)
{
    return write_across(img, buf, len, off, false);
}

/* Every grain of a streamOptimized disk is compressed anyway; other
 * subformats have no compressed grains that VMware would read, so -c
 * asks for a stream. */
static int vmdk_write_compressed(struct img *img, const void *buf, size_t len, uint64_t off)
{
    struct vmdk *v = img->priv;
    struct vmdk_extent *e = find_extent(v, off);
    if (e->type != VMDK_EXT_SPARSE || !e->sp->compressed)
        return img_error(img, ENOTSUP, "compressed writes need a streamOptimized VMDK "
                         "(-o subformat=streamOptimized)");
    return write_across(img, buf, len, off, false);
}

static int vmdk_write_zeroes(struct img *img, uint64_t off, uint64_t len, bool may_unmap)
{
    return write_across(img, NULL, len, off, may_unmap);
}

static int vmdk_flush(struct img *img)
{
    struct vmdk *v = img->priv;
    for (size_t i = 0; i < v->n_ext; i++) {
        struct vmdk_extent *e = &v->ext[i];
        int r = 0;
        if (e->sp)
            r = vmdk_sparse_flush(img, e->sp);
        else if (e->fd >= 0)
            r = img_sync(img, e->fd, e->name);
        if (r < 0)
            return r;
    }
    return 0;
}

const struct img_format img_format_vmdk = {
    .name = "vmdk",
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .map = vmdk_map,
    .read = vmdk_read,
    .create = vmdk_create,
    .create_options = vmdk_create_options,
    .write = vmdk_write,
    .write_compressed = vmdk_write_compressed,
    .write_zeroes = vmdk_write_zeroes,
    .flush = vmdk_flush,
    .check = vmdk_check,
};
