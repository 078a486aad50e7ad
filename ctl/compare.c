/* imgctl compare: are two images' guest contents the same? */
#include "ctl/common.h"
#include "ctl/imgctl.h"
#include "core/compare.h"

#include <inttypes.h>

/* qemu-img compare's exit codes. */
enum {
    EXIT_SAME = 0,
    EXIT_DIFFERENT = 1,
    EXIT_OPEN_ERROR = 2,
    EXIT_MAP_ERROR = 3,
    EXIT_READ_ERROR = 4,
};

struct compare_args {
    const char *fmt_a, *fmt_b;
    bool strict, progress, quiet, force_share;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: imgctl compare [-f FMT] [-F FMT] [-s] [-p] [-q] [-U] FILE1 FILE2\n\n"
            "Compare the guest contents of two images (with their backing chains).\n"
            "Exit 0: identical, 1: different, 2: cannot open, 3: map error, 4: read error.\n\n"
            "  -f FMT             format of FILE1 (default: probe)\n"
            "  -F FMT             format of FILE2 (default: probe)\n"
            "  -s                 strict: sizes and allocation must match too\n"
            "  -p                 show progress\n"
            "  -q                 quiet: print nothing, only the exit code tells\n"
            "  -U, --force-share  open without taking QEMU's locks\n"
            "  -h, --help         this help\n");
}

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    ctl_progress_update(ctx, done, total);
}

static int report(const struct compare_args *a, const struct img_compare_result *res)
{
    FILE *out = a->quiet ? NULL : stdout;
    if (res->verdict == IMG_COMPARE_SIZE) {
        if (out)
            fprintf(out, "Strict mode: Image size mismatch!\n");
        return EXIT_DIFFERENT;
    }
    if (res->size_mismatch && out)
        fprintf(out, "Warning: Image size mismatch!\n");
    switch (res->verdict) {
    case IMG_COMPARE_STATUS:
        if (out)
            fprintf(out, "Strict mode: Offset %" PRIu64 " block status mismatch!\n", res->offset);
        return EXIT_DIFFERENT;
    case IMG_COMPARE_CONTENT:
        if (out)
            fprintf(out, "Content mismatch at offset %" PRIu64 "!\n", res->offset);
        return EXIT_DIFFERENT;
    default:
        if (out)
            fprintf(out, "Images are identical.\n");
        return EXIT_SAME;
    }
}

static int compare_images(const struct compare_args *a, const char *file_a, const char *file_b)
{
    unsigned flags = a->force_share ? CTL_OPEN_FORCE_SHARE : 0;
    struct img *img_a = ctl_open(file_a, a->fmt_a, flags);
    if (!img_a)
        return EXIT_OPEN_ERROR;
    struct img *img_b = ctl_open(file_b, a->fmt_b, flags);
    if (!img_b) {
        img_close(img_a);
        return EXIT_OPEN_ERROR;
    }
    struct ctl_progress bar;
    ctl_progress_init(&bar, a->progress && !a->quiet);
    struct img_compare_opts o = { .strict = a->strict, .progress = on_progress,
                                  .progress_ctx = &bar };
    struct img_compare_result res;
    int r = img_compare(img_a, img_b, &o, &res), code;
    if (r < 0) {
        ctl_progress_done(&bar);
        ctl_error("%s", res.failed->errmsg);
        code = res.stage == IMG_COMPARE_MAP ? EXIT_MAP_ERROR : EXIT_READ_ERROR;
    } else {
        ctl_progress_done(&bar);
        code = report(a, &res);
    }
    img_close(img_a);
    img_close(img_b);
    return code;
}

static int compare_run(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    struct compare_args a = { 0 };
    int c;
    while ((c = ctl_getopt(argc, argv, "hf:F:spqU", longopts)) != -1) {
        switch (c) {
        case 'h': usage(stdout); return 0;
        case 'f': a.fmt_a = optarg; break;
        case 'F': a.fmt_b = optarg; break;
        case 's': a.strict = true; break;
        case 'p': a.progress = true; break;
        case 'q': a.quiet = true; break;
        case 'U': a.force_share = true; break;
        default: return 1;
        }
    }
    if (optind != argc - 2)
        return ctl_usage_error(argv[0], "Expecting two image file names");
    return compare_images(&a, argv[optind], argv[optind + 1]);
}

const struct ctl_cmd ctl_cmd_compare = {
    .name = "compare",
    .summary = "compare the guest contents of two images",
    .run = compare_run,
};
