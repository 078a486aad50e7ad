/* imgfs daemon: shared declarations of the fuse/ layer (tree, ops, log). */
#ifndef IMGFS_FUSE_H
#define IMGFS_FUSE_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "core/img.h"

#define IMGFS_VERSION "0.1.0"
/* Largest read the kernel may send us (max_read / max_write / max_pages). */
#define IMGFS_MAX_IO (1u << 20)

struct imgfs_cfg {
    char *src;            /* real path of SRC */
    char *mnt;            /* real path of MNT (skipped when it lies in SRC) */
    int src_fd;           /* SRC itself: every source path is relative to it */
    bool force_share;     /* -o force_share: take no QEMU lock bytes */
    bool allow_outside;   /* -o allow_outside: backing files may leave SRC */
    bool use_syslog;      /* daemonized: stderr is /dev/null */
    double timeout;       /* attr/entry cache timeout in seconds */
};
extern struct imgfs_cfg cfg;

/* What identifies one version of a source file: when any of these changes,
 * cached sizes and probes are stale. */
struct file_sig {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

/* One source file or folder.  Nodes live for the whole mount so that an inode
 * number, once given to a path, never changes or gets reused. */
struct node {
    fuse_ino_t ino;
    char *rel;            /* path below SRC ("" for the root) */
    char *name;           /* name shown in the mount; tree lock */
    bool is_dir;

    /* folders, under the tree lock */
    fuse_ino_t *kids;
    size_t n_kids;
    bool scanned;
    struct file_sig dir_sig;

    /* files, under `lock` */
    pthread_mutex_t lock;
    bool probed;          /* probe_sig valid */
    struct file_sig probe_sig;
    bool is_image;        /* probes as an image that opens (top layer) */
    const char *fmt;      /* driver name, static storage */
    char *real;           /* real path, to match companions */
    char *fail;           /* why an image-looking file did not open */
    uint64_t vsize;
    uint32_t cluster;
    bool attr_valid;      /* data_bytes valid for attr_sig */
    struct file_sig attr_sig;
    uint64_t data_bytes;
    struct chain *chain;  /* the current version's open chain, while handles use it */
    bool cache_sig_valid; /* the version the kernel's page cache holds */
    struct file_sig cache_sig;
};

/* One opened version of an image file, shared by the handles opened on it.
 * A handle keeps its chain when the file is replaced or deleted under it:
 * it goes on reading the bytes it opened, while new opens get a chain of
 * the new version.  fi->fh of an open file points here. */
struct chain {
    struct node *node;
    struct img *img;
    struct file_sig sig;  /* the top file's version when opened */
    unsigned refs;        /* open handles; node->lock */
    bool data_valid;      /* data_bytes counted; node->lock */
    uint64_t data_bytes;
};

/* tree.c */
int tree_init(void);
void tree_destroy(void);
void tree_scan_all(void);
struct node *tree_get(fuse_ino_t ino);
int tree_lookup(struct node *dir, const char *name, struct node **out);
struct dir_entry {
    fuse_ino_t ino;
    char *name;
    bool is_dir;
};
int tree_list(struct node *dir, struct dir_entry **out, size_t *n);
void tree_free_list(struct dir_entry *e, size_t n);
size_t tree_count(void);
fuse_ino_t tree_parent(const struct node *n);
int node_attr(struct node *n, struct stat *st);
/* Attributes for an open handle: of the version it reads, even when the
 * path now names another file or none. */
int chain_attr(struct chain *c, struct stat *st);
int node_open(struct node *n, struct chain **chain, bool *keep_cache);
void chain_release(struct chain *c);

/* naming.c */
bool name_has_raw_suffix(const char *name);
char *name_short(const char *name);
char *name_full(const char *name);

/* log.c */
void log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_once(const char *msg);

/* io.c */
void io_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void io_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void io_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
             struct fuse_file_info *fi);
void io_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
              struct fuse_file_info *fi);

/* ops.c */
extern const struct fuse_lowlevel_ops imgfs_ops;

#endif
