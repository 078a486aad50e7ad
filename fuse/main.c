/* imgfs SRC MNT: command line, mount, daemon life cycle. */
#include "imgfs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#define MAX_THREADS 32

struct imgfs_cfg cfg = { .src_fd = -1, .timeout = 1.0 };

struct cli {
    char *src, *mnt;
    int nonopts;
    int foreground, debug, help, version, rw;
    int force_share, allow_outside;
};

enum { KEY_DEBUG, KEY_HELP, KEY_VERSION };

static const struct fuse_opt cli_spec[] = {
    { "-f", offsetof(struct cli, foreground), 1 },
    { "force_share", offsetof(struct cli, force_share), 1 },
    { "allow_outside", offsetof(struct cli, allow_outside), 1 },
    { "rw", offsetof(struct cli, rw), 1 },
    FUSE_OPT_KEY("-d", KEY_DEBUG),
    FUSE_OPT_KEY("--debug", KEY_DEBUG),
    FUSE_OPT_KEY("debug", KEY_DEBUG),
    FUSE_OPT_KEY("-h", KEY_HELP),
    FUSE_OPT_KEY("--help", KEY_HELP),
    FUSE_OPT_KEY("-V", KEY_VERSION),
    FUSE_OPT_KEY("--version", KEY_VERSION),
    FUSE_OPT_END
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: imgfs [options] SRC MNT\n"
            "Show every disk image of SRC (qcow2, vmdk, vdi, vhd, raw ...) as a sparse,\n"
            "read-only raw file under MNT.\n"
            "\n"
            "  -f                 stay in the foreground\n"
            "  -d, --debug        FUSE debug output (implies -f)\n"
            "  -o force_share     take no QEMU image locks (like qemu-img -U)\n"
            "  -o allow_outside   let backing and data files lie outside SRC\n"
            "  -o OPT[,OPT...]    FUSE mount options, e.g. allow_other\n"
            "  -h, --help         this help\n"
            "  -V, --version      print the version\n"
            "Unmount with: fusermount3 -u MNT\n");
}

static int cli_key(void *data, const char *arg, int key, struct fuse_args *out)
{
    (void)out;
    struct cli *c = data;
    switch (key) {
    case KEY_DEBUG:
        c->debug = c->foreground = 1;
        return 0;
    case KEY_HELP:
        c->help = 1;
        return 0;
    case KEY_VERSION:
        c->version = 1;
        return 0;
    case FUSE_OPT_KEY_NONOPT:
        if (c->nonopts == 0)
            c->src = strdup(arg);
        else if (c->nonopts == 1)
            c->mnt = strdup(arg);
        else
            fprintf(stderr, "imgfs: unexpected argument '%s'\n", arg);
        return ++c->nonopts > 2 ? -1 : 0;
    default:
        if (strcmp(arg, "allow_other") == 0)
            fprintf(stderr, "imgfs: allow_other: every user may read these images\n");
        return 1;   /* a FUSE option: handed on to the session */
    }
}

/* Resolve one of the two folders or say clearly what is wrong. */
static char *real_dir(const char *what, const char *path)
{
    char *real = realpath(path, NULL);
    struct stat st;
    if (!real || stat(real, &st) < 0) {
        fprintf(stderr, "imgfs: %s %s: %s\n", what, path, strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "imgfs: %s %s: not a folder\n", what, path);
    } else {
        return real;
    }
    free(real);
    return NULL;
}

static int check_cli(const struct cli *c)
{
    if (c->rw) {
        fprintf(stderr, "imgfs: -o rw is not supported yet; images are shown read-only\n");
        return -1;
    }
    if (!c->src || !c->mnt) {
        fprintf(stderr, "imgfs: need SRC and MNT (see imgfs --help)\n");
        return -1;
    }
    cfg.src = real_dir("source", c->src);
    cfg.mnt = cfg.src ? real_dir("mount point", c->mnt) : NULL;
    if (!cfg.src || !cfg.mnt)
        return -1;
    if (strcmp(cfg.src, cfg.mnt) == 0) {
        fprintf(stderr, "imgfs: the mount point cannot be the source folder\n");
        return -1;
    }
    cfg.src_fd = open(cfg.src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cfg.src_fd < 0) {
        fprintf(stderr, "imgfs: source %s: %s\n", cfg.src, strerror(errno));
        return -1;
    }
    cfg.force_share = c->force_share;
    cfg.allow_outside = c->allow_outside;
    return 0;
}

/* Our fixed mount options: read-only, the kernel checks the (write-less)
 * modes, 1 MiB reads, and a name that says what is mounted. */
static int add_mount_opts(struct fuse_args *args, const struct cli *c)
{
    char *opts = NULL;
    char max_read[32];
    snprintf(max_read, sizeof(max_read), "max_read=%u", IMGFS_MAX_IO);
    char *fsname;
    if (asprintf(&fsname, "fsname=%s", cfg.src) < 0)
        return -1;
    int r = fuse_opt_add_opt(&opts, "ro,default_permissions,subtype=imgfs");
    r = r ? r : fuse_opt_add_opt(&opts, max_read);
    r = r ? r : fuse_opt_add_opt_escaped(&opts, fsname);
    r = r ? r : fuse_opt_add_arg(args, "-o");
    r = r ? r : fuse_opt_add_arg(args, opts);
    if (!r && c->debug)
        r = fuse_opt_add_arg(args, "-d");
    free(opts);
    free(fsname);
    return r;
}

static int serve(struct fuse_session *se, bool foreground)
{
    if (fuse_daemonize(foreground) < 0)
        return -1;
    if (!foreground) {
        openlog("imgfs", LOG_PID, LOG_DAEMON);
        cfg.use_syslog = true;
    }
    struct fuse_loop_config *lc = fuse_loop_cfg_create();
    if (!lc)
        return -1;
    /* One /dev/fuse fd per worker thread: less contention on reads. */
    fuse_loop_cfg_set_clone_fd(lc, 1);
    fuse_loop_cfg_set_max_threads(lc, MAX_THREADS);
    int r = fuse_session_loop_mt(se, lc);
    fuse_loop_cfg_destroy(lc);
    return r < 0 ? -1 : 0;   /* > 0: ended by a signal, which is a clean end */
}

static int run(struct fuse_args *args, const struct cli *c)
{
    int status = 1;
    if (tree_init() < 0) {
        fprintf(stderr, "imgfs: out of memory\n");
        return 1;
    }
    /* Before the mount: problems with images are said on the terminal. */
    tree_scan_all();
    struct fuse_session *se = fuse_session_new(args, &imgfs_ops, sizeof(imgfs_ops), NULL);
    if (!se)
        goto out_tree;
    if (fuse_set_signal_handlers(se) < 0)
        goto out_session;
    if (fuse_session_mount(se, cfg.mnt) < 0)
        goto out_signals;
    status = serve(se, c->foreground) < 0 ? 1 : 0;
    fuse_session_unmount(se);
out_signals:
    fuse_remove_signal_handlers(se);
out_session:
    fuse_session_destroy(se);
out_tree:
    tree_destroy();
    return status;
}

int main(int argc, char **argv)
{
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct cli c = { 0 };
    int status = 1;
    if (fuse_opt_parse(&args, &c, cli_spec, cli_key) < 0)
        goto out;
    if (c.help || c.version) {
        if (c.help)
            usage(stdout);
        else
            printf("imgfs %s\n", IMGFS_VERSION);
        status = 0;
        goto out;
    }
    if (check_cli(&c) < 0 || add_mount_opts(&args, &c) < 0)
        goto out;
    status = run(&args, &c);
out:
    if (cfg.src_fd >= 0)
        close(cfg.src_fd);
    free(cfg.src);
    free(cfg.mnt);
    free(c.src);
    free(c.mnt);
    fuse_opt_free_args(&args);
    return status;
}
