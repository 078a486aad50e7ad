/* imgctl create: a new image file, as qemu-img create. */
#include "ctl/common.h"
#include "ctl/imgctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct create_args {
    const char *format;          /* -f, raw when absent as in qemu-img */
    const char *backing, *backing_fmt;
    bool unsafe, quiet;
    struct ctl_kvlist opts;
    const char *path, *size_arg;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: imgctl create [-f FMT] [-o OPTIONS] [-b BACKING -F BACKING_FMT] [-u] [-q]\n"
            "                     FILE [SIZE]\n\n"
            "Create a new image.  SIZE takes k, M, G, T, P or E suffixes (10G, 1.5G);\n"
            "without SIZE the image is as large as its backing file.\n\n"
            "  -f FMT        image format (default: raw)\n"
            "  -o OPTIONS    format options k=v,k2=v2 (\",,\" for a comma); -o help lists them\n"
            "  -b BACKING    backing file, recorded as given (relative to FILE's folder)\n"
            "  -F FMT        format of the backing file\n"
            "  -u            unsafe: do not open the backing file (SIZE then required)\n"
            "  -q            quiet: no \"Formatting\" line\n"
            "  -h, --help    this help\n");
}

static void bad_size(const char *arg, int r)
{
    if (r == -ERANGE)
        ctl_error("Invalid image size specified. Must be between 0 and 9223372036854775807.");
    else
        ctl_error("Invalid image size specified. You may use k, M, G, T, P or E suffixes "
                  "for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    (void)arg;
}

/* The size from the command line or -o size=; *given says whether any. */
static int explicit_size(const struct create_args *a, uint64_t *size, bool *given)
{
    const char *opt = ctl_kvlist_get(&a->opts, "size");
    *given = a->size_arg || opt;
    if (a->size_arg && opt) {
        ctl_error("%s: The image size must be specified only once", a->path);
        return -1;
    }
    if (!*given)
        return 0;
    int r = img_parse_size(a->size_arg ? a->size_arg : opt, size);
    if (r < 0)
        bad_size(a->size_arg ? a->size_arg : opt, r);
    return r < 0 ? -1 : 0;
}

/* Open the backing file as the new image will find it, for its size and to
 * refuse a name that does not open (qemu-img does both unless -u). */
static int backing_size(const struct create_args *a, uint64_t *size)
{
    char *where = ctl_backing_name(a->path, a->backing);
    if (!where) {
        ctl_error("out of memory");
        return -1;
    }
    struct img_open_opts o = { .format = a->backing_fmt, .force_share = true,
                               .no_backing = true, .allow_outside = true };
    struct img *img;
    char err[IMG_ERRMSG_MAX + 64];
    int r = img_open(where, &o, &img, err, sizeof(err));
    if (r < 0) {
        size_t n = strlen(where);
        const char *why = strncmp(err, where, n) == 0 && err[n] == ':' ? err + n + 2 : err;
        ctl_error("%s: Could not open '%s': %s", a->path, a->backing, why);
    } else {
        *size = img->size;
        img_close(img);
    }
    free(where);
    return r < 0 ? -1 : 0;
}

/* Options for the driver: -o minus what struct img_create_opts carries. */
static size_t driver_opts(const struct ctl_kvlist *l, struct img_kv *out)
{
    size_t n = 0;
    for (size_t i = 0; i < l->n; i++) {
        const char *k = l->kv[i].key;
        if (strcmp(k, "size") && strcmp(k, "backing_file") && strcmp(k, "backing_fmt"))
            out[n++] = l->kv[i];
    }
    return n;
}

static int settle_backing(struct create_args *a, const struct img_format *fmt)
{
    if (!a->backing)
        a->backing = ctl_kvlist_get(&a->opts, "backing_file");
    if (!a->backing_fmt)
        a->backing_fmt = ctl_kvlist_get(&a->opts, "backing_fmt");
    if (!a->backing)
        return 0;
    if (strcmp(fmt->name, "raw") == 0) {
        ctl_error("%s: Backing file not supported for file format 'raw'", a->path);
        return -1;
    }
    if (!a->backing_fmt) {
        ctl_error("%s: Backing file specified without backing format", a->path);
        return -1;
    }
    return 0;
}

static int create_image(struct create_args *a)
{
    const struct img_format *fmt = ctl_format(a->format);
    if (!fmt)
        return 1;
    if (ctl_kvlist_wants_help(&a->opts)) {
        if (ctl_print_create_options(fmt, a->path, stdout) < 0)
            printf("Format '%s' has no creation options we know of.\n", fmt->name);
        return 0;
    }
    if (!a->path)
        return ctl_usage_error("create", "Expecting image file name");
    if (ctl_check_create_options(fmt, &a->opts, a->path) < 0 || settle_backing(a, fmt) < 0)
        return 1;
    uint64_t size = 0, from_backing = 0;
    bool given;
    if (explicit_size(a, &size, &given) < 0)
        return 1;
    if (a->backing && (!a->unsafe || !given) && backing_size(a, &from_backing) < 0)
        return 1;
    if (!given && !a->backing) {
        ctl_error("%s: Image creation needs a size parameter", a->path);
        return 1;
    }
    struct img_kv kv[a->opts.n + 1];
    struct img_create_opts o = {
        .size = given ? size : from_backing, .backing_file = a->backing,
        .backing_fmt = a->backing ? a->backing_fmt : NULL, .opts = kv,
    };
    o.n_opts = driver_opts(&a->opts, kv);
    if (!a->quiet)
        ctl_print_formatting(stdout, a->path, fmt, &o);
    return ctl_create(a->path, fmt, &o) < 0 ? 1 : 0;
}

static int create_run(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct create_args a = { .format = "raw" };
    int c, code = -1;
    while (code < 0 && (c = ctl_getopt(argc, argv, "hf:o:b:F:uq", longopts)) != -1) {
        switch (c) {
        case 'h': usage(stdout); code = 0; break;
        case 'f': a.format = optarg; break;
        case 'o': if (ctl_kvlist_add(&a.opts, optarg) < 0) code = 1; break;
        case 'b': a.backing = optarg; break;
        case 'F': a.backing_fmt = optarg; break;
        case 'u': a.unsafe = true; break;
        case 'q': a.quiet = true; break;
        default: code = 1; break;
        }
    }
    if (code < 0 && argc - optind > 2)
        code = ctl_usage_error(argv[0], "Unexpected argument: %s", argv[optind + 2]);
    if (code < 0) {
        a.path = optind < argc ? argv[optind] : NULL;
        a.size_arg = optind + 1 < argc ? argv[optind + 1] : NULL;
        code = create_image(&a);
    }
    ctl_kvlist_free(&a.opts);
    return code;
}

const struct ctl_cmd ctl_cmd_create = {
    .name = "create",
    .summary = "create a new image",
    .run = create_run,
};
