/* The mirror of SRC: which source files are images, what they are called in
 * the mount, their inode numbers, sizes and shared open chains.
 *
 * Locks, always taken in this order: scan_lock (one folder scan at a time),
 * node->lock (probe, attributes, open chain of one file), tree_lock (node
 * table, names, folder listings, companion set).  tree_lock is only held for
 * short, non-blocking work. */
#include "imgfs.h"
#include "strmap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#define MAX_SCAN_DEPTH 64

static pthread_mutex_t tree_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t scan_lock = PTHREAD_MUTEX_INITIALIZER;
static struct node **nodes;      /* nodes[ino - 1] */
static size_t n_nodes, cap_nodes;
static struct strmap by_rel;     /* "d:rel" / "f:rel" -> ino */
static struct strmap companions; /* real paths of files owned by an image */

/* ---- signatures ---- */

static struct file_sig sig_of(const struct stat *st)
{
    return (struct file_sig){ st->st_dev, st->st_ino, st->st_size, st->st_mtim };
}

static bool sig_eq(const struct file_sig *a, const struct file_sig *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* fstatat relative to SRC; the root is "". */
static int stat_rel(const char *rel, struct stat *st)
{
    return fstatat(cfg.src_fd, rel[0] ? rel : ".", st, 0) < 0 ? -errno : 0;
}

static char *join(const char *a, const char *b)
{
    char *out;
    if (!a[0])
        return strdup(b);
    return asprintf(&out, "%s/%s", a, b) < 0 ? NULL : out;
}

/* ---- the node table ---- */

/* The node of `rel`, created on first sight.  A file and a folder that take
 * turns at one path get different inodes: the kernel must not see a cached
 * file turn into a folder. */
static struct node *node_get_or_add(const char *rel, bool is_dir)
{
    char *key;
    uint64_t ino;
    struct node *n = NULL;
    if (asprintf(&key, "%c:%s", is_dir ? 'd' : 'f', rel) < 0)
        return NULL;
    pthread_mutex_lock(&tree_lock);
    if (strmap_get(&by_rel, key, &ino)) {
        n = nodes[ino - 1];
        goto out;
    }
    if (n_nodes == cap_nodes) {
        size_t cap = cap_nodes ? cap_nodes * 2 : 256;
        struct node **nn = realloc(nodes, cap * sizeof(*nn));
        if (!nn)
            goto out;
        nodes = nn;
        cap_nodes = cap;
    }
    n = calloc(1, sizeof(*n));
    if (!n || !(n->rel = strdup(rel)) || strmap_put(&by_rel, key, n_nodes + 1) < 0) {
        if (n)
            free(n->rel);
        free(n);
        n = NULL;
        goto out;
    }
    n->ino = n_nodes + 1;
    n->is_dir = is_dir;
    pthread_mutex_init(&n->lock, NULL);
    nodes[n_nodes++] = n;
out:
    pthread_mutex_unlock(&tree_lock);
    free(key);
    return n;
}

struct node *tree_get(fuse_ino_t ino)
{
    struct node *n = NULL;
    pthread_mutex_lock(&tree_lock);
    if (ino >= 1 && ino <= n_nodes)
        n = nodes[ino - 1];
    pthread_mutex_unlock(&tree_lock);
    return n;
}

size_t tree_count(void)
{
    pthread_mutex_lock(&tree_lock);
    size_t n = n_nodes;
    pthread_mutex_unlock(&tree_lock);
    return n;
}

int tree_init(void)
{
    struct node *root = node_get_or_add("", true);
    if (!root)
        return -ENOMEM;
    root->name = strdup("");
    return root->ino == FUSE_ROOT_ID ? 0 : -EINVAL;
}

void tree_destroy(void)
{
    for (size_t i = 0; i < n_nodes; i++) {
        struct node *n = nodes[i];
        if (n->chain) {
            img_close(n->chain->img);
            free(n->chain);
        }
        pthread_mutex_destroy(&n->lock);
        free(n->kids);
        free(n->rel);
        free(n->name);
        free(n->real);
        free(n->fail);
        free(n);
    }
    free(nodes);
    nodes = NULL;
    n_nodes = cap_nodes = 0;
    strmap_free(&by_rel);
    strmap_free(&companions);
}

/* ---- probing one file ---- */

static char *src_path(const struct node *n)
{
    return join(cfg.src, n->rel);
}

/* Which driver shows this file, or NULL when it is no image: any format the
 * content proves, or raw when only the name says so. */
static const char *pick_format(const struct node *n)
{
    int fd = openat(cfg.src_fd, n->rel, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return NULL;
    const char *base = strrchr(n->rel, '/');
    base = base ? base + 1 : n->rel;
    const char *fmt = img_probe_name(fd, base);
    close(fd);
    if (fmt && strcmp(fmt, "raw") != 0)
        return fmt;
    return name_has_raw_suffix(base) ? "raw" : NULL;
}

static void add_companions(const struct img *img)
{
    pthread_mutex_lock(&tree_lock);
    for (size_t i = 0; i < img->n_companions; i++)
        strmap_put(&companions, img->companions[i], 1);
    pthread_mutex_unlock(&tree_lock);
}

/* Open the top layer alone (no locks: we only look) to validate the header
 * and learn the size, cluster size and companion files.  node->lock held. */
static void probe_locked(struct node *n, const struct stat *st)
{
    struct file_sig sig = sig_of(st);
    if (n->probed && sig_eq(&sig, &n->probe_sig))
        return;
    n->probed = true;
    n->probe_sig = sig;
    n->is_image = false;
    free(n->fail);
    n->fail = NULL;
    n->attr_valid = false;
    n->fmt = S_ISREG(st->st_mode) ? pick_format(n) : NULL;
    if (!n->fmt)
        return;
    char *path = src_path(n);
    struct img_open_opts o = {
        .format = n->fmt, .no_backing = true, .force_share = true,
        .allow_outside = cfg.allow_outside, .confine = cfg.src,
    };
    struct img *img = NULL;
    char err[IMG_ERRMSG_MAX];
    free(n->real);
    n->real = path ? realpath(path, NULL) : NULL;
    if (path && img_open(path, &o, &img, err, sizeof(err)) == 0) {
        n->is_image = true;
        n->fmt = img_format_name(img);
        n->vsize = img->size;
        n->cluster = img->cluster_size;
        add_companions(img);
        img_close(img);
    } else if (path) {
        /* Said by the folder scan once it knows the file is not a part of
         * another image (a VMDK extent alone fails to open). */
        n->fail = strdup(err);
    }
    free(path);
}

static bool is_companion(const char *real)
{
    pthread_mutex_lock(&tree_lock);
    bool yes = real && strmap_get(&companions, real, NULL);
    pthread_mutex_unlock(&tree_lock);
    return yes;
}

/* ---- scanning one folder ---- */

struct cand {
    struct node *n;
    char *shown;
};

struct scan {
    struct cand *c;
    size_t n, cap;
    struct node **failed;   /* looked like images but did not open */
    size_t n_failed;
    bool quiet;             /* first start-up pass: say nothing yet */
};

static int scan_push(struct scan *s, struct node *n, char *shown)
{
    if (!shown)
        return -ENOMEM;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        struct cand *c = realloc(s->c, cap * sizeof(*c));
        if (!c) {
            free(shown);
            return -ENOMEM;
        }
        s->c = c;
        s->cap = cap;
    }
    s->c[s->n++] = (struct cand){ n, shown };
    return 0;
}

static void note_failed(struct scan *s, struct node *n)
{
    struct node **f = realloc(s->failed, (s->n_failed + 1) * sizeof(*f));
    if (f) {
        s->failed = f;
        s->failed[s->n_failed++] = n;
    }
}

static bool is_companion(const char *real);

/* Say why each image-looking file is left out, unless it belongs to an
 * image after all. */
static void report_failed(struct scan *s)
{
    for (size_t i = 0; i < s->n_failed; i++) {
        struct node *n = s->failed[i];
        pthread_mutex_lock(&n->lock);
        if (!s->quiet && n->fail && !is_companion(n->real))
            log_once(n->fail);
        pthread_mutex_unlock(&n->lock);
    }
    free(s->failed);
}

static bool is_mountpoint(const char *rel)
{
    char *path = join(cfg.src, rel);
    bool yes = path && cfg.mnt && strcmp(path, cfg.mnt) == 0;
    free(path);
    return yes;
}

/* Look at one folder entry: a sub-folder, or a file that is an image. */
static void scan_entry(struct scan *s, int dfd, const char *dir_rel, const char *name)
{
    struct stat st;
    char *rel = join(dir_rel, name);
    if (!rel || is_mountpoint(rel) || fstatat(dfd, name, &st, 0) < 0)
        goto out;
    if (S_ISDIR(st.st_mode)) {
        struct stat lst;
        /* A symlinked folder could make the tree endless: not followed. */
        if (fstatat(dfd, name, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(lst.st_mode)) {
            struct node *n = node_get_or_add(rel, true);
            if (n)
                scan_push(s, n, strdup(name));
        }
    } else if (S_ISREG(st.st_mode)) {
        struct node *n = node_get_or_add(rel, false);
        if (!n)
            goto out;
        pthread_mutex_lock(&n->lock);
        probe_locked(n, &st);
        bool image = n->is_image, failed = n->fail != NULL;
        pthread_mutex_unlock(&n->lock);
        if (image)
            scan_push(s, n, name_short(name));
        else if (failed)
            note_failed(s, n);
    }
out:
    free(rel);
}

static int cmp_shown(const void *a, const void *b)
{
    return strcmp(((const struct cand *)a)->shown, ((const struct cand *)b)->shown);
}

/* Images that would share a name keep their full name plus ".raw". */
static void resolve_clashes(struct scan *s)
{
    if (!s->n)
        return;
    qsort(s->c, s->n, sizeof(*s->c), cmp_shown);
    for (size_t i = 0; i < s->n;) {
        size_t j = i + 1;
        while (j < s->n && strcmp(s->c[i].shown, s->c[j].shown) == 0)
            j++;
        for (size_t k = i; j - i > 1 && k < j; k++) {
            if (s->c[k].n->is_dir)
                continue;
            const char *base = strrchr(s->c[k].n->rel, '/');
            char *full = name_full(base ? base + 1 : s->c[k].n->rel);
            if (full) {
                free(s->c[k].shown);
                s->c[k].shown = full;
            }
        }
        i = j;
    }
}

/* After the full names, a clash is only possible with an odd file such as
 * "a.qcow2.raw" next to "a.qcow2": the first keeps the name, the rest are
 * left out (and said so). */
static void drop_duplicates(struct scan *s)
{
    if (!s->n)
        return;
    qsort(s->c, s->n, sizeof(*s->c), cmp_shown);
    size_t out = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (out && strcmp(s->c[out - 1].shown, s->c[i].shown) == 0) {
            char msg[IMG_ERRMSG_MAX];
            snprintf(msg, sizeof(msg), "%s/%s: its name %s is taken; not shown", cfg.src,
                     s->c[i].n->rel, s->c[i].shown);
            log_once(msg);
            free(s->c[i].shown);
            continue;
        }
        s->c[out++] = s->c[i];
    }
    s->n = out;
}

/* Drop the files that are parts of another image (data files, extents). */
static void drop_companions(struct scan *s)
{
    size_t out = 0;
    for (size_t i = 0; i < s->n; i++) {
        struct node *n = s->c[i].n;
        if (!n->is_dir) {
            pthread_mutex_lock(&n->lock);
            bool hide = is_companion(n->real);
            pthread_mutex_unlock(&n->lock);
            if (hide) {
                free(s->c[i].shown);
                continue;
            }
        }
        s->c[out++] = s->c[i];
    }
    s->n = out;
}

static void commit_scan(struct node *dir, struct scan *s, const struct stat *st)
{
    fuse_ino_t *kids = malloc((s->n ? s->n : 1) * sizeof(*kids));
    if (!kids)
        return;
    pthread_mutex_lock(&tree_lock);
    for (size_t i = 0; i < s->n; i++) {
        kids[i] = s->c[i].n->ino;
        free(s->c[i].n->name);
        s->c[i].n->name = s->c[i].shown;
        s->c[i].shown = NULL;
    }
    free(dir->kids);
    dir->kids = kids;
    dir->n_kids = s->n;
    dir->dir_sig = sig_of(st);
    dir->scanned = true;
    pthread_mutex_unlock(&tree_lock);
}

/* Read the source folder again and rebuild its listing.  scan_lock held. */
static int scan_dir_locked(struct node *dir, bool quiet)
{
    struct stat st;
    int dfd = openat(cfg.src_fd, dir->rel[0] ? dir->rel : ".",
                     O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return -ENOMEM;
    }
    if (fstat(dfd, &st) < 0) {
        closedir(d);
        return -errno;
    }
    struct scan s = { .quiet = quiet };
    for (struct dirent *de; (de = readdir(d));) {
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            scan_entry(&s, dfd, dir->rel, de->d_name);
    }
    closedir(d);
    drop_companions(&s);
    report_failed(&s);
    resolve_clashes(&s);
    drop_duplicates(&s);
    commit_scan(dir, &s, &st);
    for (size_t i = 0; i < s.n; i++)
        free(s.c[i].shown);
    free(s.c);
    return 0;
}

/* Rescan when forced (opendir: a file may have become an image in place) or
 * when the folder changed since the last scan (lookup). */
static int refresh_dir(struct node *dir, bool force, bool quiet)
{
    struct stat st;
    int r = stat_rel(dir->rel, &st);
    if (r < 0)
        return r;
    struct file_sig sig = sig_of(&st);
    pthread_mutex_lock(&tree_lock);
    bool fresh = dir->scanned && sig_eq(&sig, &dir->dir_sig);
    pthread_mutex_unlock(&tree_lock);
    if (fresh && !force)
        return 0;
    pthread_mutex_lock(&scan_lock);
    r = scan_dir_locked(dir, quiet);
    pthread_mutex_unlock(&scan_lock);
    return r;
}

static void scan_tree(struct node *dir, int depth, bool quiet)
{
    if (depth > MAX_SCAN_DEPTH || refresh_dir(dir, true, quiet) < 0)
        return;
    pthread_mutex_lock(&tree_lock);
    size_t n = dir->n_kids;
    fuse_ino_t *kids = malloc((n ? n : 1) * sizeof(*kids));
    if (kids)
        memcpy(kids, dir->kids, n * sizeof(*kids));
    pthread_mutex_unlock(&tree_lock);
    for (size_t i = 0; kids && i < n; i++) {
        struct node *k = tree_get(kids[i]);
        if (k && k->is_dir)
            scan_tree(k, depth + 1, quiet);
    }
    free(kids);
}

/* Scan everything at start-up, twice: a data file in one folder may belong
 * to an image of a folder scanned after it; the second pass hides it
 * (probes are cached, so it costs only stats). */
void tree_scan_all(void)
{
    struct node *root = tree_get(FUSE_ROOT_ID);
    scan_tree(root, 0, true);
    scan_tree(root, 0, false);
}

/* ---- what ops.c asks ---- */

int tree_lookup(struct node *dir, const char *name, struct node **out)
{
    *out = NULL;
    if (!dir->is_dir)
        return -ENOTDIR;
    int r = refresh_dir(dir, false, false);
    if (r < 0)
        return r;
    pthread_mutex_lock(&tree_lock);
    for (size_t i = 0; i < dir->n_kids; i++) {
        struct node *k = nodes[dir->kids[i] - 1];
        if (strcmp(k->name, name) == 0) {
            *out = k;
            break;
        }
    }
    pthread_mutex_unlock(&tree_lock);
    return *out ? 0 : -ENOENT;
}

int tree_list(struct node *dir, struct dir_entry **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    int r = refresh_dir(dir, true, false);
    if (r < 0)
        return r;
    pthread_mutex_lock(&tree_lock);
    struct dir_entry *e = calloc(dir->n_kids ? dir->n_kids : 1, sizeof(*e));
    size_t n = 0;
    for (size_t i = 0; e && i < dir->n_kids; i++) {
        struct node *k = nodes[dir->kids[i] - 1];
        e[n].name = strdup(k->name);
        if (!e[n].name)
            break;
        e[n].ino = k->ino;
        e[n++].is_dir = k->is_dir;
    }
    pthread_mutex_unlock(&tree_lock);
    if (!e)
        return -ENOMEM;
    *out = e;
    *count = n;
    return 0;
}

void tree_free_list(struct dir_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].name);
    free(e);
}

/* ---- attributes ---- */

/* Data bytes of the whole chain.  A chain that cannot be opened (missing
 * backing file) still gets an honest count of its top layer.  node->lock
 * held. */
static uint64_t count_data_locked(struct node *n, const struct file_sig *sig)
{
    uint64_t bytes = 0;
    if (n->chain && sig_eq(&n->chain->sig, sig) && img_data_bytes(n->chain->img, &bytes) == 0)
        return bytes;
    char *path = src_path(n);
    char err[IMG_ERRMSG_MAX];
    struct img *img = NULL;
    struct img_open_opts o = {
        .format = n->fmt, .force_share = true,
        .allow_outside = cfg.allow_outside, .confine = cfg.src,
    };
    if (path && img_open(path, &o, &img, err, sizeof(err)) < 0) {
        log_once(err);
        o.no_backing = true;
        img_open(path, &o, &img, err, sizeof(err));
    }
    if (img && img_data_bytes(img, &bytes) < 0) {
        log_once(img->errmsg);
        bytes = 0;
    }
    img_close(img);
    free(path);
    return bytes;
}

static void fill_common(struct stat *out, const struct stat *st, fuse_ino_t ino)
{
    *out = *st;
    out->st_ino = ino;
    /* A read-only view: nobody may think a write could work. */
    out->st_mode &= ~(mode_t)0222;
}

/* A raw view: the image file's owner, mode and times; the disk's size and
 * data bytes. */
static void fill_view(struct stat *out, const struct stat *st, fuse_ino_t ino, uint64_t size,
                      uint64_t data_bytes, uint32_t blksize)
{
    fill_common(out, st, ino);
    out->st_mode = S_IFREG | (out->st_mode & 07555);
    out->st_nlink = 1;
    out->st_size = (off_t)size;
    out->st_blocks = (blkcnt_t)((data_bytes + 511) / 512);
    out->st_blksize = blksize;
    out->st_rdev = 0;
}

int node_attr(struct node *n, struct stat *out)
{
    struct stat st;
    int r = stat_rel(n->rel, &st);
    if (r < 0)
        return r;
    if (n->is_dir) {
        if (!S_ISDIR(st.st_mode))
            return -ENOENT;
        fill_common(out, &st, n->ino);
        return 0;
    }
    pthread_mutex_lock(&n->lock);
    probe_locked(n, &st);
    if (!n->is_image) {
        pthread_mutex_unlock(&n->lock);
        return -ENOENT;
    }
    struct file_sig sig = sig_of(&st);
    if (!n->attr_valid || !sig_eq(&sig, &n->attr_sig)) {
        n->data_bytes = count_data_locked(n, &sig);
        n->attr_sig = sig;
        n->attr_valid = true;
    }
    fill_view(out, &st, n->ino, n->vsize, n->data_bytes, n->cluster);
    pthread_mutex_unlock(&n->lock);
    return 0;
}

/* ---- open chains, shared by the handles of one file version ---- */

static int open_chain_locked(struct node *n, const struct file_sig *sig, struct chain **out)
{
    char *path = src_path(n);
    char err[IMG_ERRMSG_MAX];
    struct img_open_opts o = {
        .format = n->fmt, .force_share = cfg.force_share,
        .allow_outside = cfg.allow_outside, .confine = cfg.src,
    };
    struct chain *c = calloc(1, sizeof(*c));
    int r = path && c ? img_open(path, &o, &c->img, err, sizeof(err)) : -ENOMEM;
    free(path);
    if (r < 0) {
        free(c);
        if (r != -ENOMEM)
            log_once(err);
        /* The kernel's answer for "someone else holds this image": busy. */
        return r == -EAGAIN ? -EBUSY : r == -ENOMEM ? r : -EIO;
    }
    c->node = n;
    c->sig = *sig;
    *out = c;
    return 0;
}

int node_open(struct node *n, struct chain **chain, bool *keep_cache)
{
    struct stat st;
    int r = stat_rel(n->rel, &st);
    if (r < 0)
        return r;
    struct file_sig sig = sig_of(&st);
    pthread_mutex_lock(&n->lock);
    probe_locked(n, &st);
    /* A file replaced or changed since the current chain was opened gets a
     * chain of its own; handles of the old one keep reading the old one. */
    if (n->chain && !sig_eq(&n->chain->sig, &sig))
        n->chain = NULL;
    if (!n->is_image)
        r = -ENOENT;
    else if (!n->chain)
        r = open_chain_locked(n, &sig, &n->chain);
    if (r == 0) {
        n->chain->refs++;
        *chain = n->chain;
        /* The page cache holds bytes of the version last opened: good only
         * if that is this one. */
        *keep_cache = n->cache_sig_valid && sig_eq(&sig, &n->cache_sig);
        n->cache_sig = sig;
        n->cache_sig_valid = true;
    }
    pthread_mutex_unlock(&n->lock);
    return r;
}

void chain_release(struct chain *c)
{
    struct node *n = c->node;
    pthread_mutex_lock(&n->lock);
    bool last = --c->refs == 0;
    if (last && n->chain == c)
        n->chain = NULL;
    pthread_mutex_unlock(&n->lock);
    if (last) {
        img_close(c->img);
        free(c);
    }
}

int chain_attr(struct chain *c, struct stat *out)
{
    struct node *n = c->node;
    struct stat st;
    /* The path still names this version: the usual answer, cached. */
    if (stat_rel(n->rel, &st) == 0) {
        struct file_sig now = sig_of(&st);
        if (sig_eq(&now, &c->sig))
            return node_attr(n, out);
    }
    if (fstat(c->img->fd, &st) < 0)
        return -errno;
    pthread_mutex_lock(&n->lock);
    if (!c->data_valid && img_data_bytes(c->img, &c->data_bytes) == 0)
        c->data_valid = true;
    fill_view(out, &st, n->ino, c->img->size, c->data_bytes, c->img->cluster_size);
    pthread_mutex_unlock(&n->lock);
    return 0;
}

/* The folder holding `n` (the root is its own parent), for "..". */
fuse_ino_t tree_parent(const struct node *n)
{
    const char *slash = strrchr(n->rel, '/');
    if (!n->rel[0] || !slash)
        return FUSE_ROOT_ID;
    char *key;
    uint64_t ino = FUSE_ROOT_ID;
    if (asprintf(&key, "d:%.*s", (int)(slash - n->rel), n->rel) < 0)
        return FUSE_ROOT_ID;
    pthread_mutex_lock(&tree_lock);
    strmap_get(&by_rel, key, &ino);
    pthread_mutex_unlock(&tree_lock);
    free(key);
    return ino;
}
