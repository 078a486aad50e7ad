/* imgctl rebase: qemu-img rebase's command line over core/rebase.
 *
 * The image is opened read-write with its old chain (read locks below it),
 * the new backing with shared read locks: readers never conflict, so a new
 * backing that is part of the old chain opens fine. */
#include <stdlib.h>
#include <string.h>

#include "core/format.h"
#include "core/rebase.h"
#include "ctl/backing.h"
#include "ctl/common.h"
#include "ctl/imgctl.h"

struct rebase_args {
    const char *fmt, *backing, *backing_fmt, *file;
    bool unsafe, progress, quiet, force_share;
};

static void rebase_help(void)
{
    printf("usage: imgctl rebase [-q] [-p] [-u] [-U] [-f FMT] -b BACKING [-F BACKING_FMT] FILE\n\n"
           "Make BACKING the backing file of FILE.  FILE keeps reading the same: where\n"
           "it does not hold a range and the old chain differs from BACKING, the old\n"
           "bytes are copied into FILE first.  -b \"\" removes the backing file (FILE\n"
           "then holds everything).  A relative BACKING is relative to FILE's folder.\n\n"
           "  -u              unsafe: only rewrite the header (the old chain is not read)\n"
           "  -F BACKING_FMT  format of BACKING (probed when absent)\n"
           "  -f FMT          format of FILE (probed when absent)\n"
           "  -U              open the backing files without taking their locks\n"
           "  -p              show progress on a terminal\n"
           "  -q              quiet\n"
           "  -t, -T CACHE    accepted for qemu-img compatibility, ignored\n");
}

static int parse_args(int argc, char **argv, struct rebase_args *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    while ((c = ctl_getopt(argc, argv, "hf:b:F:upqUt:T:", longopts)) != -1) {
        switch (c) {
        case 'h': rebase_help(); return 0;
        case 'f': a->fmt = optarg; break;
        case 'b': a->backing = optarg; break;
        case 'F': a->backing_fmt = optarg; break;
        case 'u': a->unsafe = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 'U': a->force_share = true; break;
        case 't': case 'T': break;
        default: return 1;
        }
    }
    if (argc - optind != 1)
        return ctl_usage_error("rebase", "Expecting one image file name");
    a->file = argv[optind];
    if (!a->backing)
        return ctl_usage_error("rebase", "Must specify backing file (-b)");
    if (a->backing_fmt && !a->backing[0])
        return ctl_usage_error("rebase", "-F makes no sense with -b \"\"");
    if (a->backing_fmt && !ctl_format(a->backing_fmt))
        return 1;
    return -1;
}

static const char *recorded_name(const struct rebase_args *a)
{
    return a->backing[0] ? a->backing : NULL;
}

/* -u: the header alone.  The backing need not exist; its format is probed
 * only when it does and none was given. */
static int rebase_unsafe(const struct rebase_args *a)
{
    char probed[64];
    const char *bfmt = a->backing_fmt;
    struct img *img = ctl_open(a->file, a->fmt, CTL_OPEN_RW | CTL_OPEN_NO_BACKING);
    if (!img)
        return 1;
    if (!bfmt && a->backing[0]) {
        struct img *b = ctl_open_backing(a->file, a->backing, NULL,
                                         CTL_OPEN_FORCE_SHARE | CTL_OPEN_NO_BACKING);
        if (b) {
            snprintf(probed, sizeof(probed), "%s", b->fmt->name);
            bfmt = probed;
            img_close(b);
        }
    }
    int r = -1;
    if (!img->fmt->set_backing)
        ctl_error("%s: format %s cannot record a backing file", a->file, img->fmt->name);
    else if ((r = img->fmt->set_backing(img, recorded_name(a), bfmt)) < 0)
        ctl_error("Could not change the backing file to '%s': %s", a->backing,
                  img->errmsg[0] ? img->errmsg : strerror(-r));
    else if (img->fmt->flush && (r = img->fmt->flush(img)) < 0)
        ctl_error("%s: %s", a->file, img->errmsg[0] ? img->errmsg : strerror(-r));
    img_close(img);
    return r < 0 ? 1 : 0;
}

static void show_progress(void *ctx, uint64_t done, uint64_t total)
{
    ctl_progress_update(ctx, done, total);
}

static int rebase_safe(const struct rebase_args *a)
{
    struct img *file = ctl_open(a->file, a->fmt, CTL_OPEN_RW);
    if (!file)
        return 1;
    struct img *nb = NULL;
    if (a->backing[0]) {
        nb = ctl_open_backing(a->file, a->backing, a->backing_fmt,
                              a->force_share ? CTL_OPEN_FORCE_SHARE : 0);
        if (!nb) {
            img_close(file);
            return 1;
        }
    }
    struct ctl_progress prog;
    ctl_progress_init(&prog, a->progress && !a->quiet);
    struct img_rebase_opts o = {
        .file = file, .new_backing = nb, .backing_name = recorded_name(a),
        .backing_fmt = nb ? (a->backing_fmt ? a->backing_fmt : nb->fmt->name) : NULL,
        .progress = show_progress, .progress_ctx = &prog,
    };
    struct img_copy_error err;
    int r = img_rebase(&o, &err);
    if (r < 0) {
        if (prog.enabled)
            putchar('\n');
        ctl_error("error while %s at byte %llu: %s", err.writing ? "writing" : "reading",
                  (unsigned long long)err.offset, err.msg);
    } else {
        ctl_progress_done(&prog);
    }
    img_close(nb);
    img_close(file);
    return r < 0 ? 1 : 0;
}

static int rebase_run(int argc, char **argv)
{
    struct rebase_args a = { 0 };
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0)
        return rc;
    return a.unsafe ? rebase_unsafe(&a) : rebase_safe(&a);
}

const struct ctl_cmd ctl_cmd_rebase = {
    .name = "rebase",
    .summary = "change the backing file of an image",
    .run = rebase_run,
};
