/* imgctl check: the driver's consistency check, reported as qemu-img check. */
#include "ctl/common.h"
#include "ctl/imgctl.h"

#include <string.h>

/* qemu-img check's exit codes. */
enum {
    EXIT_CLEAN = 0,
    EXIT_CHECK_ERRORS = 1,
    EXIT_CORRUPT = 2,
    EXIT_LEAKS = 3,
    EXIT_UNSUPPORTED = 63,
};

struct check_args {
    const char *format;
    enum ctl_output output;
    unsigned repair;
    bool quiet, force_share;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: imgctl check [-f FMT] [-r leaks|all] [--output=human|json] [-q] [-U] FILE\n\n"
            "Check the image's metadata (reference counts against what is in use).\n"
            "Exit 0: clean, 1: check not completed, 2: corruptions, 3: leaked clusters,\n"
            "63: the format has no check.\n\n"
            "  -f FMT              image format (default: probe)\n"
            "  -r leaks|all        repair leaked clusters, or everything that can be\n"
            "      --output FMT    human (default) or json\n"
            "  -q                  quiet\n"
            "  -U, --force-share   open without taking QEMU's locks (not with -r)\n"
            "  -h, --help          this help\n");
}

/* Findings go to stderr line by line, as qemu-img prints them. */
static void report_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "%s\n", line);
}

static void print_json(const struct img_check *c, const char *file, const char *fmt)
{
    struct ctl_json j;
    ctl_json_init(&j, stdout);
    ctl_json_begin_object(&j, NULL);
    /* qemu-img prints the counters only when they are not zero. */
    if (c->image_end_offset)
        ctl_json_uint(&j, "image-end-offset", c->image_end_offset);
    if (c->total_clusters)
        ctl_json_uint(&j, "total-clusters", c->total_clusters);
    ctl_json_uint(&j, "check-errors", c->check_errors);
    if (c->allocated_clusters)
        ctl_json_uint(&j, "allocated-clusters", c->allocated_clusters);
    ctl_json_str(&j, "filename", file);
    ctl_json_str(&j, "format", fmt);
    if (c->fragmented_clusters)
        ctl_json_uint(&j, "fragmented-clusters", c->fragmented_clusters);
    if (c->compressed_clusters)
        ctl_json_uint(&j, "compressed-clusters", c->compressed_clusters);
    if (c->leaks)
        ctl_json_uint(&j, "leaks", c->leaks);
    if (c->corruptions)
        ctl_json_uint(&j, "corruptions", c->corruptions);
    if (c->leaks_fixed)
        ctl_json_uint(&j, "leaks-fixed", c->leaks_fixed);
    if (c->corruptions_fixed)
        ctl_json_uint(&j, "corruptions-fixed", c->corruptions_fixed);
    ctl_json_end_object(&j);
    ctl_json_finish(&j);
}

static void print_problems(const struct img_check *c)
{
    if (c->corruptions)
        printf("\n%llu errors were found on the image.\n"
               "Data may be corrupted, or further writes to the image may corrupt it.\n",
               (unsigned long long)c->corruptions);
    if (c->leaks)
        printf("\n%llu leaked clusters were found on the image.\n"
               "This means waste of disk space, but no harm to data.\n",
               (unsigned long long)c->leaks);
    if (c->check_errors)
        printf("\n%llu internal errors have occurred during the check.\n",
               (unsigned long long)c->check_errors);
}

static void print_human(const struct img_check *c)
{
    if (c->leaks_fixed || c->corruptions_fixed)
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %llu leaked clusters\n    %llu corruptions\n\n"
               "Double checking the fixed image now...\n",
               (unsigned long long)c->leaks_fixed, (unsigned long long)c->corruptions_fixed);
    if (!c->corruptions && !c->leaks && !c->check_errors)
        printf("No errors were found on the image.\n");
    else
        print_problems(c);
    if (c->total_clusters && c->allocated_clusters)
        printf("%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
               (unsigned long long)c->allocated_clusters, (unsigned long long)c->total_clusters,
               c->allocated_clusters * 100.0 / c->total_clusters,
               c->fragmented_clusters * 100.0 / c->allocated_clusters,
               c->compressed_clusters * 100.0 / c->allocated_clusters);
    if (c->image_end_offset)
        printf("Image end offset: %llu\n", (unsigned long long)c->image_end_offset);
}

/* Run the check; after a repair, check again so that the report describes
 * the image as it is now, keeping the counts of what was fixed. */
static int run_check(struct img *img, unsigned repair, struct img_check *c)
{
    memset(c, 0, sizeof(*c));
    c->report = report_line;
    int r = img->fmt->check(img, c, repair);
    if (r < 0 || !(c->leaks_fixed || c->corruptions_fixed))
        return r;
    uint64_t leaks_fixed = c->leaks_fixed, corruptions_fixed = c->corruptions_fixed;
    memset(c, 0, sizeof(*c));
    c->report = report_line;
    r = img->fmt->check(img, c, 0);
    c->leaks_fixed = leaks_fixed;
    c->corruptions_fixed = corruptions_fixed;
    return r;
}

static int exit_code(const struct img_check *c)
{
    if (c->check_errors)
        return EXIT_CHECK_ERRORS;
    if (c->corruptions)
        return EXIT_CORRUPT;
    return c->leaks ? EXIT_LEAKS : EXIT_CLEAN;
}

static int check_image(const struct check_args *a, const char *file)
{
    unsigned flags = CTL_OPEN_NO_BACKING | (a->repair ? CTL_OPEN_RW : 0) |
                     (a->force_share ? CTL_OPEN_FORCE_SHARE : 0);
    struct img *img = ctl_open(file, a->format, flags);
    if (!img)
        return EXIT_CHECK_ERRORS;
    int code;
    struct img_check c;
    if (!img->fmt->check) {
        ctl_error("This image format does not support checks");
        code = EXIT_UNSUPPORTED;
    } else if (run_check(img, a->repair, &c) < 0) {
        ctl_error("Check failed: %s", img->errmsg);
        code = EXIT_CHECK_ERRORS;
    } else {
        if (a->output == CTL_OUTPUT_JSON)
            print_json(&c, file, img->fmt->name);
        else if (!a->quiet)
            print_human(&c);
        code = exit_code(&c);
    }
    img_close(img);
    return code;
}

static int parse_repair(const char *arg, unsigned *repair)
{
    if (strcmp(arg, "leaks") == 0)
        *repair = IMG_CHECK_REPAIR_LEAKS;
    else if (strcmp(arg, "all") == 0)
        *repair = IMG_CHECK_REPAIR_LEAKS | IMG_CHECK_REPAIR_ERRORS;
    else {
        ctl_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s", arg);
        return -1;
    }
    return 0;
}

static int check_run(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    struct check_args a = { .output = CTL_OUTPUT_HUMAN };
    int c;
    while ((c = ctl_getopt(argc, argv, "hf:r:qU", longopts)) != -1) {
        switch (c) {
        case 'h': usage(stdout); return 0;
        case 'f': a.format = optarg; break;
        case 'q': a.quiet = true; break;
        case 'U': a.force_share = true; break;
        case 'r':
            if (parse_repair(optarg, &a.repair) < 0)
                return 1;
            break;
        case OPT_OUTPUT:
            if (ctl_parse_output(optarg, &a.output) < 0)
                return 1;
            break;
        default: return 1;
        }
    }
    if (optind != argc - 1)
        return ctl_usage_error(argv[0], "Expecting one image file name");
    if (a.repair && a.force_share)
        return ctl_usage_error(argv[0], "--force-share/-U is not allowed with -r");
    return check_image(&a, argv[optind]);
}

const struct ctl_cmd ctl_cmd_check = {
    .name = "check",
    .summary = "check an image's metadata for corruptions and leaks",
    .run = check_run,
};
