/* imgctl info: what qemu-img info prints, for one image or its whole chain. */
#include "ctl/common.h"
#include "ctl/imgctl.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct info_args {
    const char *format;
    enum ctl_output output;
    bool chain, force_share;
};

/* Everything printed about one layer. */
struct layer_info {
    const char *name;          /* as the user (or the chain) named it */
    struct img *img;
    uint64_t actual_size;
    char *full_backing;        /* NULL without a backing file */
    bool has_specific;
    struct img_info specific;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: imgctl info [-f FMT] [--backing-chain] [--output=human|json] [-U] FILE\n\n"
            "Show the virtual size, format, host usage, backing file and format-specific\n"
            "facts of FILE, as qemu-img info does.\n\n"
            "  -f, --format FMT      the image format (default: probe)\n"
            "      --backing-chain   show every layer of the backing chain\n"
            "      --output FMT      human (default) or json\n"
            "  -U, --force-share     open without taking QEMU's locks\n"
            "  -h, --help            this help\n");
}

/* Bytes the host holds for the image.  qemu-img 7.2 adds the extent files
 * of a VMDK but not a qcow2's external data file, and so do we. */
static uint64_t host_allocated(const struct img *img)
{
    struct stat st;
    uint64_t sum = fstat(img->fd, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
    if (strcmp(img->fmt->name, "vmdk") != 0)
        return sum;
    for (size_t i = 0; i < img->n_companions; i++)
        if (fstat(img->companion_fds[i], &st) == 0)
            sum += (uint64_t)st.st_blocks * 512;
    return sum;
}

/* qemu-img prints cluster-size only for formats whose get_info reports one:
 * never for raw. */
static bool prints_cluster_size(const struct img *img)
{
    return strcmp(img->fmt->name, "raw") != 0;
}

static int gather(struct layer_info *li, struct img *img, const char *name)
{
    memset(li, 0, sizeof(*li));
    li->name = name;
    li->img = img;
    li->actual_size = host_allocated(img);
    if (img->backing_file) {
        li->full_backing = ctl_backing_name(name, img->backing_file);
        if (!li->full_backing)
            return -1;
    }
    if (img->fmt->info) {
        if (img->fmt->info(img, &li->specific) < 0) {
            ctl_error("%s", img->errmsg);
            return -1;
        }
        li->has_specific = true;
    }
    return 0;
}

/* ---- JSON ---- */

static void json_specific(struct ctl_json *j, const struct layer_info *li)
{
    ctl_json_begin_object(j, "format-specific");
    ctl_json_str(j, "type", li->img->fmt->name);
    ctl_json_begin_object(j, "data");
    for (size_t i = 0; i < li->specific.n_fields; i++) {
        const struct img_info_field *f = &li->specific.fields[i];
        if (f->type == IMG_INFO_STR)
            ctl_json_str(j, f->key, f->str);
        else if (f->type == IMG_INFO_INT)
            ctl_json_int(j, f->key, f->num);
        else
            ctl_json_bool(j, f->key, f->num != 0);
    }
    ctl_json_end_object(j);
    ctl_json_end_object(j);
}

/* Members in the order qemu-img 7.2 happens to print them. */
static void json_layer(struct ctl_json *j, const struct layer_info *li)
{
    const struct img *img = li->img;
    ctl_json_begin_object(j, NULL);
    if (img->backing_file && img->backing_fmt)
        ctl_json_str(j, "backing-filename-format", img->backing_fmt);
    ctl_json_uint(j, "virtual-size", img->size);
    ctl_json_str(j, "filename", li->name);
    if (prints_cluster_size(img))
        ctl_json_uint(j, "cluster-size", img->cluster_size);
    ctl_json_str(j, "format", img->fmt->name);
    ctl_json_uint(j, "actual-size", li->actual_size);
    if (li->has_specific && li->specific.n_fields)
        json_specific(j, li);
    if (img->backing_file) {
        ctl_json_str(j, "full-backing-filename", li->full_backing);
        ctl_json_str(j, "backing-filename", img->backing_file);
    }
    ctl_json_bool(j, "dirty-flag", li->has_specific && li->specific.has_dirty &&
                                   li->specific.dirty);
    ctl_json_end_object(j);
}

/* ---- human ---- */

/* "compression-type" reads "compression type" in the human listing. */
static void human_key(const char *key)
{
    for (; *key; key++)
        putchar(*key == '-' ? ' ' : *key);
}

static void human_specific(const struct layer_info *li)
{
    printf("Format specific information:\n");
    for (size_t i = 0; i < li->specific.n_fields; i++) {
        const struct img_info_field *f = &li->specific.fields[i];
        printf("    ");
        human_key(f->key);
        if (f->type == IMG_INFO_STR)
            printf(": %s\n", f->str);
        else if (f->type == IMG_INFO_INT)
            printf(": %lld\n", (long long)f->num);
        else
            printf(": %s\n", f->num ? "true" : "false");
    }
}

static void human_layer(const struct layer_info *li)
{
    const struct img *img = li->img;
    char size[32];
    printf("image: %s\nfile format: %s\n", li->name, img->fmt->name);
    printf("virtual size: %s (%llu bytes)\n", ctl_human_size(img->size, size, sizeof(size)),
           (unsigned long long)img->size);
    printf("disk size: %s\n", ctl_human_size(li->actual_size, size, sizeof(size)));
    if (prints_cluster_size(img))
        printf("cluster_size: %u\n", img->cluster_size);
    if (img->backing_file) {
        printf("backing file: %s", img->backing_file);
        if (strcmp(img->backing_file, li->full_backing) != 0)
            printf(" (actual path: %s)", li->full_backing);
        putchar('\n');
        if (img->backing_fmt)
            printf("backing file format: %s\n", img->backing_fmt);
    }
    if (li->has_specific && li->specific.has_dirty && li->specific.dirty)
        printf("cleanly shut down: no\n");
    if (li->has_specific && li->specific.n_fields)
        human_specific(li);
}

/* ---- the walk ---- */

static void print_layer(const struct info_args *a, struct ctl_json *j,
                        const struct layer_info *li, bool first)
{
    if (a->output == CTL_OUTPUT_JSON) {
        json_layer(j, li);
        return;
    }
    if (!first)
        putchar('\n');
    human_layer(li);
}

/* Opens one layer alone (qemu-img info does not need the backing file to
 * describe an image), prints it, and returns the next layer's name. */
static int show_layer(const struct info_args *a, struct ctl_json *j, const char *name,
                      const char *format, bool first, char **next_name, char **next_fmt)
{
    unsigned flags = CTL_OPEN_NO_BACKING | (a->force_share ? CTL_OPEN_FORCE_SHARE : 0);
    struct img *img = ctl_open(name, format, flags);
    if (!img)
        return -1;
    struct layer_info li;
    int r = gather(&li, img, name);
    if (r == 0) {
        print_layer(a, j, &li, first);
        *next_name = li.full_backing;
        li.full_backing = NULL;
        *next_fmt = img->backing_fmt ? strdup(img->backing_fmt) : NULL;
    }
    free(li.full_backing);
    img_close(img);
    return r;
}

static int show(const struct info_args *a, const char *file)
{
    struct ctl_json j;
    ctl_json_init(&j, stdout);
    bool as_array = a->chain && a->output == CTL_OUTPUT_JSON;
    if (as_array)
        ctl_json_begin_array(&j, NULL);
    char *name = strdup(file), *fmt = a->format ? strdup(a->format) : NULL;
    int r = 0;
    for (unsigned depth = 0; name && r == 0; depth++) {
        if (depth >= IMG_MAX_CHAIN_DEPTH) {
            ctl_error("%s: backing chain deeper than %d layers", file, IMG_MAX_CHAIN_DEPTH);
            r = -1;
            break;
        }
        char *next = NULL, *next_fmt = NULL;
        r = show_layer(a, &j, name, fmt, depth == 0, &next, &next_fmt);
        free(name);
        free(fmt);
        name = a->chain ? next : (free(next), NULL);
        fmt = next_fmt;
    }
    free(name);
    free(fmt);
    if (as_array)
        ctl_json_end_array(&j);
    if (a->output == CTL_OUTPUT_JSON && r == 0)
        ctl_json_finish(&j);
    return r < 0 ? 1 : 0;
}

static int info_run(int argc, char **argv)
{
    enum { OPT_CHAIN = 256, OPT_OUTPUT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "backing-chain", no_argument, NULL, OPT_CHAIN },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    struct info_args a = { .output = CTL_OUTPUT_HUMAN };
    int c;
    while ((c = ctl_getopt(argc, argv, "hf:U", longopts)) != -1) {
        switch (c) {
        case 'h': usage(stdout); return 0;
        case 'f': a.format = optarg; break;
        case 'U': a.force_share = true; break;
        case OPT_CHAIN: a.chain = true; break;
        case OPT_OUTPUT:
            if (ctl_parse_output(optarg, &a.output) < 0)
                return 1;
            break;
        default: return 1;
        }
    }
    if (optind != argc - 1)
        return ctl_usage_error(argv[0], "Expecting one image file name");
    return show(&a, argv[optind]);
}

const struct ctl_cmd ctl_cmd_info = {
    .name = "info",
    .summary = "show an image's size, format, backing file and format facts",
    .run = info_run,
};
