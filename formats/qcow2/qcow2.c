/* The qcow2 driver table: probe, open, close; map and read live in map.c
 * and read.c, the header in header.c, the writer in write.c and
 * refcount.c, create.c, check.c and header_write.c. */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>

#include "core/bytes.h"

static int qcow2_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)filename;
    /* The magic alone decides; open names a bad version or header. */
    return len >= 4 && get_be32(head) == QCOW2_MAGIC ? 100 : 0;
}

static void qcow2_close(struct img *img)
{
    struct qcow2 *q = img->priv;
    if (!q)
        return;
    if (q->w) {
        /* Whatever was written reaches the disk in the safe order; a failure
         * here is left on img->errmsg (leaks at worst, never corruption). */
        if (!q->w->broken)
            qcow2_flush(img);
        qcow2_writer_free(q);
    }
    pthread_rwlock_destroy(&q->meta);
    qcow2_zcache_destroy(q);
    qcow2_cache_destroy(&q->cache);
    free(q->l1);
    free(q->data_file_name);
    free(q);   /* the data file is a companion: the core closes its fd */
    img->priv = NULL;
}

static int qcow2_open(struct img *img, const struct img_open_opts *o)
{
    struct qcow2 *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->data_fd = -1;
    pthread_rwlock_init(&q->meta, NULL);
    img->priv = q;   /* from here on, close() cleans up whatever failed */
    int r = qcow2_load_header(img, q, o);
    if (r == 0)
        r = qcow2_cache_init(&q->cache, q->cluster_size);
    if (r == 0)
        r = qcow2_zcache_init(q);
    if (r == 0 && o && o->read_write)
        r = qcow2_open_writer(img, q);
    if (r < 0) {
        qcow2_close(img);
        return r;
    }
    return 0;
}

const struct img_format img_format_qcow2 = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .map = qcow2_map,
    .read = qcow2_read,
    .info = qcow2_info,
    .create = qcow2_create,
    .create_options = qcow2_create_options,
    .write = qcow2_write,
    .write_compressed = qcow2_write_compressed,
    .write_zeroes = qcow2_write_zeroes,
    .discard = qcow2_discard,
    .flush = qcow2_flush,
    .set_backing = qcow2_set_backing,
    .resize = qcow2_resize,
    .check = qcow2_check,
};
