/* FUSE low-level operations: metadata, folders, and the refusals of a
 * read-only view.  The data path is in io.c. */
#include "imgfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
                    FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_READDIRPLUS | FUSE_CAP_AUTO_INVAL_DATA;
    conn->want |= want & conn->capable;
    /* Nothing is ever written through us. */
    conn->want &= ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ);
    /* Large requests: libfuse derives max_pages from max_write, and
     * max_read must match the -o max_read given to the session. */
    conn->max_write = IMGFS_MAX_IO;
    conn->max_read = IMGFS_MAX_IO;
    conn->max_readahead = IMGFS_MAX_IO;
}

static void fill_entry(struct fuse_entry_param *e, const struct node *n, const struct stat *st)
{
    memset(e, 0, sizeof(*e));
    e->ino = n->ino;
    e->attr = *st;
    e->attr_timeout = cfg.timeout;
    e->entry_timeout = cfg.timeout;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct node *dir = tree_get(parent), *n = NULL;
    struct fuse_entry_param e;
    struct stat st;
    int r = dir ? tree_lookup(dir, name, &n) : -ENOENT;
    if (r == 0)
        r = node_attr(n, &st);
    if (r == -ENOENT) {
        /* Cache the miss as well: ino 0 is a negative entry. */
        memset(&e, 0, sizeof(e));
        e.entry_timeout = cfg.timeout;
        fuse_reply_entry(req, &e);
        return;
    }
    if (r < 0) {
        fuse_reply_err(req, -r);
        return;
    }
    fill_entry(&e, n, &st);
    fuse_reply_entry(req, &e);
}

/* Nodes stay for the whole mount (stable inode numbers), so the kernel's
 * lookup counts need no bookkeeping. */
static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
    (void)ino;
    (void)nlookup;
    fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
    (void)count;
    (void)forgets;
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct node *n = tree_get(ino);
    struct stat st;
    int r;
    /* With a handle: the version the handle reads (the path may be gone). */
    if (fi && fi->fh && n && !n->is_dir)
        r = chain_attr((struct chain *)(uintptr_t)fi->fh, &st);
    else
        r = n ? node_attr(n, &st) : -ENOENT;
    if (r < 0)
        fuse_reply_err(req, -r);
    else
        fuse_reply_attr(req, &st, cfg.timeout);
}

/* ---- folders ---- */

/* A listing taken at opendir, so that offsets stay valid across the
 * several readdir calls of one listing. */
struct dhandle {
    struct node *dir;
    struct dir_entry *e;
    size_t n;
};

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct node *dir = tree_get(ino);
    if (!dir || !dir->is_dir) {
        fuse_reply_err(req, dir ? ENOTDIR : ENOENT);
        return;
    }
    struct dhandle *h = calloc(1, sizeof(*h));
    int r = h ? tree_list(dir, &h->e, &h->n) : -ENOMEM;
    if (r < 0) {
        free(h);
        fuse_reply_err(req, -r);
        return;
    }
    h->dir = dir;
    fi->fh = (uintptr_t)h;
    fi->cache_readdir = 0;
    if (fuse_reply_open(req, fi) == -ENOENT) {
        tree_free_list(h->e, h->n);
        free(h);
    }
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    struct dhandle *h = (struct dhandle *)(uintptr_t)fi->fh;
    tree_free_list(h->e, h->n);
    free(h);
    fuse_reply_err(req, 0);
}

/* Entry `i` of a listing: 0 is ".", 1 is "..", then the children. */
static bool dir_slot(const struct dhandle *h, size_t i, const char **name, fuse_ino_t *ino)
{
    if (i == 0) {
        *name = ".";
        *ino = h->dir->ino;
    } else if (i == 1) {
        *name = "..";
        *ino = tree_parent(h->dir);
    } else if (i - 2 < h->n) {
        *name = h->e[i - 2].name;
        *ino = h->e[i - 2].ino;
    } else {
        return false;
    }
    return true;
}

static void readdir_common(fuse_req_t req, size_t size, off_t off,
                           struct fuse_file_info *fi, bool plus)
{
    struct dhandle *h = (struct dhandle *)(uintptr_t)fi->fh;
    char *buf = malloc(size ? size : 1);
    size_t used = 0;
    const char *name;
    fuse_ino_t ino;
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    for (size_t i = off < 0 ? 0 : (size_t)off; dir_slot(h, i, &name, &ino); i++) {
        struct node *n = tree_get(ino);
        struct stat st = { .st_ino = ino };
        struct fuse_entry_param e;
        size_t len;
        if (!n)
            continue;
        if (plus) {
            /* Attributes for every entry; one gone since opendir is
             * skipped (the offsets of the others stay valid). */
            if (node_attr(n, &st) < 0)
                continue;
            fill_entry(&e, n, &st);
            len = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t)i + 1);
        } else {
            /* Plain readdir only needs the type: no image is opened. */
            st.st_mode = n->is_dir ? S_IFDIR : S_IFREG;
            len = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)i + 1);
        }
        if (len > size - used)
            break;
        used += len;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)ino;
    readdir_common(req, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    (void)ino;
    readdir_common(req, size, off, fi, true);
}

/* ---- the rest ---- */

/* The source filesystem's numbers, with no free space: nothing can be
 * written here. */
static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    struct statvfs sv;
    if (fstatvfs(cfg.src_fd, &sv) < 0) {
        fuse_reply_err(req, errno);
        return;
    }
    sv.f_bfree = sv.f_bavail = 0;
    sv.f_files = tree_count();
    sv.f_ffree = sv.f_favail = 0;
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    (void)ino;
    (void)name;
    (void)size;
    fuse_reply_err(req, ENODATA);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
    (void)ino;
    if (size == 0)
        fuse_reply_xattr(req, 0);
    else
        fuse_reply_buf(req, NULL, 0);
}

/* Everything that would change the tree.  The mount is also "ro", so the
 * kernel normally refuses these before they reach us. */
static void rofs(fuse_req_t req)
{
    fuse_reply_err(req, EROFS);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *a, int to_set,
                       struct fuse_file_info *fi)
{
    (void)ino, (void)a, (void)to_set, (void)fi;
    rofs(req);
}

static void op_mknod(fuse_req_t req, fuse_ino_t p, const char *name, mode_t m, dev_t rdev)
{
    (void)p, (void)name, (void)m, (void)rdev;
    rofs(req);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t p, const char *name, mode_t m)
{
    (void)p, (void)name, (void)m;
    rofs(req);
}

static void op_unlink(fuse_req_t req, fuse_ino_t p, const char *name)
{
    (void)p, (void)name;
    rofs(req);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t p, const char *name)
{
    (void)link, (void)p, (void)name;
    rofs(req);
}

static void op_rename(fuse_req_t req, fuse_ino_t p, const char *name, fuse_ino_t np,
                      const char *nname, unsigned int flags)
{
    (void)p, (void)name, (void)np, (void)nname, (void)flags;
    rofs(req);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t np, const char *nname)
{
    (void)ino, (void)np, (void)nname;
    rofs(req);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)ino, (void)buf, (void)size, (void)off, (void)fi;
    rofs(req);
}

static void op_create(fuse_req_t req, fuse_ino_t p, const char *name, mode_t m,
                      struct fuse_file_info *fi)
{
    (void)p, (void)name, (void)m, (void)fi;
    rofs(req);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    (void)ino, (void)name, (void)value, (void)size, (void)flags;
    rofs(req);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    (void)ino, (void)name;
    rofs(req);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
    (void)ino, (void)mode, (void)off, (void)len, (void)fi;
    rofs(req);
}

const struct fuse_lowlevel_ops imgfs_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .mknod = op_mknod,
    .mkdir = op_mkdir,
    .unlink = op_unlink,
    .rmdir = op_unlink,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
    .open = io_open,
    .read = io_read,
    .write = op_write,
    .release = io_release,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .readdirplus = op_readdirplus,
    .releasedir = op_releasedir,
    .statfs = op_statfs,
    .setxattr = op_setxattr,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
    .removexattr = op_removexattr,
    .create = op_create,
    .fallocate = op_fallocate,
    .lseek = io_lseek,
};
