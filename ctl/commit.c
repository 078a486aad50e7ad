/* imgctl commit: qemu-img commit's command line over core/commit.
 *
 * Locks: the chain is opened normally (the top read-write when it is to be
 * emptied, every lower layer with a shared read lock).  Our own read lock on
 * the base would make the read-write open of the base fail as "in use" (a
 * reader does not share "write"), so that one lock is dropped just before
 * the base is opened read-write on its own; from then on the write lock of
 * that second open guards the base against every other process.  The other
 * layers keep their read locks, so nobody writes them under us. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/commit.h"
#include "core/format.h"
#include "ctl/common.h"
#include "ctl/imgctl.h"

struct commit_args {
    const char *fmt, *base, *file;
    bool drop, progress, quiet;
};

static void commit_help(void)
{
    printf("usage: imgctl commit [-q] [-p] [-f FMT] [-b BASE] [-d] FILE\n\n"
           "Copy what FILE (and the layers between it and BASE) holds into BASE.\n\n"
           "  -f FMT   format of FILE (probed when absent)\n"
           "  -b BASE  the image of FILE's backing chain to commit into (default: FILE's\n"
           "           backing file); implies -d, as the layers in between go stale\n"
           "  -d       keep FILE's data (do not empty it)\n"
           "  -p       show progress on a terminal\n"
           "  -q       quiet\n"
           "  -t CACHE accepted for qemu-img compatibility, ignored\n");
}

static int parse_args(int argc, char **argv, struct commit_args *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = ctl_getopt(argc, argv, "hf:b:dpqt:r:", longopts)) != -1) {
        switch (c) {
        case 'h': commit_help(); return 0;
        case 'f': a->fmt = optarg; break;
        case 'b': a->base = optarg; a->drop = true; break;
        case 'd': a->drop = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 't': case 'r': break;
        default: return 1;
        }
    }
    if (argc - optind != 1)
        return ctl_usage_error("commit", "Expecting one image file name");
    a->file = argv[optind];
    return -1;
}

/* The layer of top's chain that BASE names (by file identity). */
static struct img *find_base(struct img *top, const char *base)
{
    if (!base) {
        if (!top->backing)
            ctl_error("Image '%s' does not have a backing file", top->path);
        return top->backing;
    }
    struct stat want, got;
    if (stat(base, &want) < 0) {
        ctl_error("Could not open '%s': %s", base, strerror(errno));
        return NULL;
    }
    for (struct img *l = top->backing; l; l = l->backing)
        if (fstat(l->fd, &got) == 0 && got.st_dev == want.st_dev && got.st_ino == want.st_ino)
            return l;
    ctl_error("Did not find '%s' in the backing chain of '%s'", base, top->path);
    return NULL;
}

static void show_progress(void *ctx, uint64_t done, uint64_t total)
{
    ctl_progress_update(ctx, done, total);
}

/* qemu-img commit empties the top afterwards unless -d (or -b, which
 * implies it); a driver without discard keeps the data, as qemu silently
 * does for one without make_empty.  We say so, since it costs space. */
static void note_kept(const struct commit_args *a, const struct img *top)
{
    if (!a->quiet)
        ctl_error("note: '%s' keeps its clusters (its driver cannot discard them); "
                  "it reads the same as before", top->path);
}

static int do_commit(const struct commit_args *a, struct img *top, struct img *base_layer)
{
    img_lock_release(&base_layer->lock);
    struct img *base = ctl_open(base_layer->path, base_layer->fmt->name, CTL_OPEN_RW);
    if (!base)
        return 1;
    struct ctl_progress prog;
    ctl_progress_init(&prog, a->progress && !a->quiet);
    bool kept = false;
    struct img_commit_opts o = { .top = top, .base_layer = base_layer, .base = base,
                                 .empty_top = !a->drop, .top_kept = &kept,
                                 .progress = show_progress, .progress_ctx = &prog };
    struct img_copy_error err;
    int r = img_commit(&o, &err);
    img_close(base);
    if (r < 0) {
        if (prog.enabled)
            putchar('\n');
        ctl_error("error while %s at byte %llu: %s", err.writing ? "writing" : "reading",
                  (unsigned long long)err.offset, err.msg);
        return 1;
    }
    ctl_progress_done(&prog);
    if (kept)
        note_kept(a, top);
    return 0;
}

static int commit_run(int argc, char **argv)
{
    struct commit_args a = { 0 };
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;
    /* Read-write only when it is to be emptied; with -d a read lock is
     * enough and others may go on reading it. */
    struct img *top = ctl_open(a.file, a.fmt, a.drop ? 0 : CTL_OPEN_RW);
    if (!top)
        return 1;
    struct img *base_layer = find_base(top, a.base);
    rc = base_layer ? do_commit(&a, top, base_layer) : 1;
    img_close(top);
    if (rc == 0 && !a.quiet)
        printf("Image committed.\n");
    return rc;
}

const struct ctl_cmd ctl_cmd_commit = {
    .name = "commit",
    .summary = "copy an overlay's data into its backing file",
    .run = commit_run,
};
