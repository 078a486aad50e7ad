/* imgctl resize: change an image's virtual size, as qemu-img resize. */
#include "ctl/common.h"
#include "ctl/imgctl.h"

#include <errno.h>
#include <string.h>

struct resize_args {
    const char *format;
    bool shrink, quiet;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: imgctl resize [-f FMT] [--shrink] [-q] FILE [+|-]SIZE\n\n"
            "Set the virtual size of FILE to SIZE, or grow (+) or shrink (-) it by SIZE.\n"
            "Shrinking drops the data past the new end, so it needs --shrink.\n\n"
            "  -f FMT        image format (default: probe)\n"
            "      --shrink  allow making the image smaller\n"
            "  -q            quiet\n"
            "  -h, --help    this help\n");
}

static void bad_size(void)
{
    ctl_error("Parameter 'size' expects a non-negative number below 2^64 (optional suffix "
              "k, M, G, T, P or E for kilo-, mega-, giga-, tera-, peta- and exabytes)");
}

/* The new size from the current one and the argument; -1 after a message. */
static int new_size(const struct img *img, const struct img_size_delta *d, uint64_t *out)
{
    uint64_t cur = img->size;
    if (d->mode == IMG_SIZE_ABSOLUTE) {
        *out = d->bytes;
    } else if (d->mode == IMG_SIZE_GROW) {
        if (d->bytes > INT64_MAX - cur) {
            ctl_error("Invalid image size specified. Must be between 0 and 9223372036854775807.");
            return -1;
        }
        *out = cur + d->bytes;
    } else {
        if (d->bytes > cur) {
            ctl_error("New image size must be positive");
            return -1;
        }
        *out = cur - d->bytes;
    }
    return 0;
}

static int resize_image(const struct resize_args *a, const char *file,
                        const struct img_size_delta *d)
{
    struct img *img = ctl_open(file, a->format, CTL_OPEN_RW | CTL_OPEN_NO_BACKING);
    if (!img)
        return 1;
    uint64_t size;
    int code = 1;
    if (new_size(img, d, &size) < 0)
        goto out;
    if (size < img->size && !a->shrink) {
        ctl_error("Use the --shrink option to perform a shrink operation.");
        goto out;
    }
    if (!img->fmt->resize) {
        ctl_error("Image format driver does not support resize");
        goto out;
    }
    if (size != img->size && img->fmt->resize(img, size, a->shrink) < 0) {
        ctl_error("%s", img->errmsg);
        goto out;
    }
    if (img->fmt->flush && img->fmt->flush(img) < 0) {
        ctl_error("%s", img->errmsg);
        goto out;
    }
    if (!a->quiet)
        printf("Image resized.\n");
    code = 0;
out:
    img_close(img);
    return code;
}

static int resize_run(int argc, char **argv)
{
    enum { OPT_SHRINK = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "shrink", no_argument, NULL, OPT_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    /* The size is the last argument and may start with '-': take it out
     * before getopt would read it as options. */
    if (argc >= 3 && strcmp(argv[argc - 1], "--help") && strcmp(argv[argc - 1], "-h"))
        argc--;
    else if (argc < 3) {
        for (int i = 1; i < argc; i++)
            if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
                usage(stdout);
                return 0;
            }
        return ctl_usage_error(argv[0], "Expecting image file name and size");
    }
    const char *size_arg = argv[argc];
    struct resize_args a = { 0 };
    int c;
    while ((c = ctl_getopt(argc, argv, "hf:q", longopts)) != -1) {
        switch (c) {
        case 'h': usage(stdout); return 0;
        case 'f': a.format = optarg; break;
        case 'q': a.quiet = true; break;
        case OPT_SHRINK: a.shrink = true; break;
        default: return 1;
        }
    }
    if (optind != argc - 1)
        return ctl_usage_error(argv[0], "Expecting image file name and size");
    struct img_size_delta d;
    if (img_parse_size_delta(size_arg, &d) < 0) {
        bad_size();
        return 1;
    }
    return resize_image(&a, argv[optind], &d);
}

const struct ctl_cmd ctl_cmd_resize = {
    .name = "resize",
    .summary = "grow or shrink an image's virtual size",
    .run = resize_run,
};
