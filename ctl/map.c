/* imgctl map: the chain's map as qemu-img map prints it. */
#include "ctl/common.h"
#include "ctl/imgctl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* One output entry; runs of extents that read alike are merged into it. */
struct map_entry {
    uint64_t start, length;
    unsigned depth;
    bool present, zero, data, has_offset;
    uint64_t offset;
};

struct map_args {
    const char *format;
    enum ctl_output output;
    bool force_share;
    uint64_t start, max_length;
};

struct map_out {
    enum ctl_output output;
    bool first;
    char **names;            /* layer names by depth, for the human File column */
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: imgctl map [-f FMT] [--output=human|json] [-U] [-s OFF] [-l LEN] FILE\n\n"
            "Show which guest ranges are data, zero or unallocated, the layer of the\n"
            "backing chain that holds them and where, as qemu-img map does.\n\n"
            "  -f, --format FMT        the image format (default: probe)\n"
            "      --output FMT        human (default) or json\n"
            "  -s, --start-offset OFF  begin at this guest offset\n"
            "  -l, --max-length LEN    map at most this many bytes\n"
            "  -U, --force-share       open without taking QEMU's locks\n"
            "  -h, --help              this help\n");
}

/* Translate one chain-walk answer into qemu-img's flags (FORMATS.md). */
static void entry_from_extent(struct map_entry *e, const struct img_extent *x)
{
    memset(e, 0, sizeof(*e));
    e->start = x->off;
    e->length = x->len;
    e->depth = x->depth;
    e->present = x->kind != IMG_UNALLOCATED;
    e->zero = x->kind != IMG_DATA;
    e->data = x->kind == IMG_DATA;
    if (x->kind == IMG_DATA && x->fd >= 0 && !x->compressed) {
        e->has_offset = true;
        e->offset = x->host_off;
    }
    /* Past the end of a shorter backing file, qemu credits the zeros to the
     * layer that deferred to it, not to the short layer itself. */
    if (x->kind == IMG_UNALLOCATED && x->layer && x->off >= x->layer->size && e->depth > 0)
        e->depth--;
}

static bool mergeable(const struct map_entry *cur, const struct map_entry *next)
{
    if (cur->length == 0)
        return false;
    if (cur->depth != next->depth || cur->present != next->present ||
        cur->zero != next->zero || cur->data != next->data ||
        cur->has_offset != next->has_offset)
        return false;
    return !cur->has_offset || cur->offset + cur->length == next->offset;
}

static int print_entry(struct map_out *o, const struct map_entry *e, bool last)
{
    if (o->output == CTL_OUTPUT_JSON) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u,"
               " \"present\": %s, \"zero\": %s, \"data\": %s",
               o->first ? "[" : "", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        fputs(last ? "}]\n" : "},\n", stdout);
        o->first = false;
        return 0;
    }
    if (e->data && !e->has_offset) {
        ctl_error("File contains external, encrypted or compressed clusters.");
        return -1;
    }
    if (e->data && !e->zero)
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length,
               e->offset, o->names[e->depth]);
    return 0;
}

/* The human File column names each layer as qemu-img does: the chain's
 * backing names joined to the folder of the image as given. */
static char **layer_names(struct img *img, const char *file)
{
    unsigned n = 0;
    for (struct img *l = img; l; l = l->backing)
        n++;
    char **names = calloc(n + 1, sizeof(*names));
    if (!names)
        return NULL;
    names[0] = strdup(file);
    unsigned d = 0;
    for (struct img *l = img; l->backing && names[d]; l = l->backing, d++)
        names[d + 1] = ctl_backing_name(names[d], l->backing_file);
    return names;
}

static void free_names(char **names)
{
    for (char **p = names; p && *p; p++)
        free(*p);
    free(names);
}

static int walk(struct img *img, struct map_out *o, uint64_t start, uint64_t end)
{
    struct map_entry cur = { .start = start }, next;
    for (uint64_t off = start; off < end; off += next.length) {
        struct img_extent x;
        if (img_map(img, off, end - off, &x) < 0) {
            ctl_error("%s", img->errmsg);
            return -1;
        }
        entry_from_extent(&next, &x);
        if (mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (cur.length && print_entry(o, &cur, false) < 0)
            return -1;
        cur = next;
    }
    if (cur.length)
        return print_entry(o, &cur, true);
    if (o->output == CTL_OUTPUT_JSON)
        printf("[]\n");
    return 0;
}

static int map_image(const struct map_args *a, const char *file)
{
    struct img *img = ctl_open(file, a->format, a->force_share ? CTL_OPEN_FORCE_SHARE : 0);
    if (!img)
        return 1;
    static char out_buf[1 << 16];   /* 100k-entry maps are mostly printf */
    setvbuf(stdout, out_buf, _IOFBF, sizeof(out_buf));
    struct map_out o = { .output = a->output, .first = true };
    o.names = layer_names(img, file);
    int r = -1;
    if (!o.names) {
        ctl_error("out of memory");
    } else {
        uint64_t start = a->start < img->size ? a->start : img->size;
        uint64_t end = img->size - start > a->max_length ? start + a->max_length : img->size;
        if (a->output == CTL_OUTPUT_HUMAN)
            printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
        r = walk(img, &o, start, end);
    }
    free_names(o.names);
    img_close(img);
    fflush(stdout);
    return r < 0 ? 1 : 0;
}

static int parse_offset(const char *cmd, const char *what, const char *arg, uint64_t *out)
{
    if (img_parse_size(arg, out) < 0) {
        ctl_usage_error(cmd, "Invalid %s specified: %s", what, arg);
        return -1;
    }
    return 0;
}

static int map_run(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    struct map_args a = { .output = CTL_OUTPUT_HUMAN, .max_length = UINT64_MAX };
    int c;
    while ((c = ctl_getopt(argc, argv, "hf:s:l:U", longopts)) != -1) {
        switch (c) {
        case 'h': usage(stdout); return 0;
        case 'f': a.format = optarg; break;
        case 'U': a.force_share = true; break;
        case 's':
            if (parse_offset(argv[0], "offset", optarg, &a.start) < 0)
                return 1;
            break;
        case 'l':
            if (parse_offset(argv[0], "length", optarg, &a.max_length) < 0)
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
    return map_image(&a, argv[optind]);
}

const struct ctl_cmd ctl_cmd_map = {
    .name = "map",
    .summary = "show the data, zero and unallocated ranges of an image's chain",
    .run = map_run,
};
