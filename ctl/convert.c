/* imgctl convert: qemu-img convert's command line over core/convert. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/convert.h"
#include "ctl/common.h"
#include "ctl/imgctl.h"
#include "ctl/backing.h"

/* qemu-img refuses -S values that are not whole sectors or above 16 MiB. */
#define MAX_SPARSE_SIZE (16u << 20)

struct convert_args {
    const char *src_fmt, *out_fmt;
    const char *backing, *backing_fmt;
    bool compress, no_create, force_share, progress, quiet;
    bool unsafe_cache;   /* -t: "unsafe" (no syncs) is qemu-img convert's default */
    uint64_t sparse_size;
    unsigned threads;
    struct ctl_kvlist opts;
    char **srcs;
    size_t n_srcs;
    const char *dst;
};

static void convert_help(void)
{
    printf("usage: imgctl convert [-p] [-q] [-c] [-n] [-U] [-t CACHE] [-f FMT] [-O OUTPUT_FMT] [-o OPTIONS]\n"
           "                      [-B BACKING_FILE [-F BACKING_FMT]] [-S SPARSE_SIZE] [-m N]\n"
           "                      SRC [SRC...] DST\n\n"
           "Copy one or more images (concatenated) into a new image DST.  Only what the\n"
           "sources' maps hold is read; holes are never written.\n\n"
           "  -f FMT          format of the sources (probed when absent)\n"
           "  -O OUTPUT_FMT   format of DST: raw (default) or qcow2\n"
           "  -o OPTIONS      create options of DST (cluster_size=, compat=, compression_type=, ...)\n"
           "  -c              compress the data clusters of DST\n"
           "  -B BACKING_FILE DST gets this backing file; only what differs from it is written\n"
           "  -F BACKING_FMT  format of BACKING_FILE (probed when absent)\n"
           "  -S SPARSE_SIZE  zero runs inside data at least this long stay holes (default 4k;\n"
           "                  0 writes data as read)\n"
           "  -n              DST exists: do not create it (its zero ranges are written as zeros)\n"
           "  -U              open the sources without taking their locks (force share)\n"
           "  -m N            writer threads (default: 1, or one per CPU with -c)\n"
           "  -p              show progress on a terminal\n"
           "  -q              quiet\n"
           "  -t CACHE        cache mode of DST: unsafe (default, as qemu-img: never synced),\n"
           "                  writeback, writethrough, none, directsync (synced at the end)\n"
           "  -T CACHE        cache mode of the sources: accepted, ignored (reads are plain)\n");
}

/* -o backing_file= / backing_fmt= are spelled like options but are fields of
 * their own for the driver. */
static int take_backing_opts(struct convert_args *a)
{
    const char *bf = ctl_kvlist_get(&a->opts, "backing_file");
    const char *bfmt = ctl_kvlist_get(&a->opts, "backing_fmt");
    if (bf && a->backing && strcmp(bf, a->backing) != 0)
        return ctl_usage_error("convert", "-B and -o backing_file= name different files");
    if (bf)
        a->backing = bf;
    if (bfmt)
        a->backing_fmt = bfmt;
    size_t k = 0;
    for (size_t i = 0; i < a->opts.n; i++) {
        const char *key = a->opts.kv[i].key;
        if (strcmp(key, "backing_file") != 0 && strcmp(key, "backing_fmt") != 0)
            a->opts.kv[k++] = a->opts.kv[i];
    }
    a->opts.n = k;
    return 0;
}

static int parse_sparse(const char *arg, uint64_t *out)
{
    if (ctl_parse_size(arg, out) < 0 || *out % 512 || *out > MAX_SPARSE_SIZE) {
        ctl_error("Invalid buffer size for sparse output specified. "
                  "Valid sizes are multiples of 512 up to 16 MiB.");
        return -1;
    }
    return 0;
}

static int parse_threads(const char *arg, unsigned *out)
{
    char *end;
    long n = strtol(arg, &end, 10);
    if (*arg == '\0' || *end || n < 1 || n > 16) {
        ctl_error("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
        return -1;
    }
    *out = (unsigned)n;
    return 0;
}

/* Returns -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, struct convert_args *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;
    a->sparse_size = IMG_CONVERT_DEFAULT_SPARSE;
    a->unsafe_cache = true;
    while ((c = ctl_getopt(argc, argv, "hf:O:o:B:F:S:cnUpqm:t:T:W", longopts)) != -1) {
        switch (c) {
        case 'h': convert_help(); return 0;
        case 'f': a->src_fmt = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'o':
            if (ctl_kvlist_add(&a->opts, optarg) < 0)
                return 1;
            break;
        case 'B': a->backing = optarg; break;
        case 'F': a->backing_fmt = optarg; break;
        case 'S':
            if (parse_sparse(optarg, &a->sparse_size) < 0)
                return 1;
            break;
        case 'c': a->compress = true; break;
        case 'n': a->no_create = true; break;
        case 'U': a->force_share = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 'm':
            if (parse_threads(optarg, &a->threads) < 0)
                return 1;
            break;
        case 't':
            if (ctl_parse_cache(optarg, &a->unsafe_cache) < 0)
                return 1;
            break;
        case 'T': case 'W': break;   /* source cache mode, out-of-order writes */
        default: return 1;
        }
    }
    if (argc - optind < 2)
        return ctl_usage_error("convert", "Expecting a source and a destination image name");
    a->srcs = argv + optind;
    a->n_srcs = (size_t)(argc - optind - 1);
    a->dst = argv[argc - 1];
    if (a->backing && a->no_create)
        return ctl_usage_error("convert", "-B makes no sense with -n: the destination exists");
    return take_backing_opts(a) ? 1 : -1;
}

/* ---- the destination ---- */

/* Is `path` one of the files the sources read?  Creating it would destroy
 * the source before it is read. */
static bool dst_is_a_source(const char *path, struct img *const *srcs, size_t n)
{
    struct stat st, ls;
    if (stat(path, &st) < 0)
        return false;
    for (size_t i = 0; i < n; i++)
        for (struct img *l = srcs[i]; l; l = l->backing)
            if (fstat(l->fd, &ls) == 0 && ls.st_dev == st.st_dev && ls.st_ino == st.st_ino)
                return true;
    return false;
}

/* An existing destination that a VM or qemu-img holds must not be truncated:
 * test its lock bytes before create() touches it. */
static bool dst_in_use(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct img_lock lk;
    char msg[IMG_ERRMSG_MAX];
    int r = img_lock_take(&lk, fd, true, path, msg, sizeof(msg));
    if (r == 0)
        img_lock_release(&lk);
    else if (r == -EAGAIN)
        ctl_error("%s", msg);
    close(fd);
    return r == -EAGAIN;
}

static int create_dst(struct convert_args *a, const struct img_format *fmt, uint64_t size)
{
    char probed[64];
    const char *bfmt = a->backing_fmt;
    if (a->backing && !bfmt) {
        if (ctl_probe_backing(a->dst, a->backing, probed, sizeof(probed)) < 0)
            return -1;
        bfmt = probed;
    }
    struct img_create_opts co = {
        .size = size, .backing_file = a->backing, .backing_fmt = bfmt,
        .opts = a->opts.kv, .n_opts = a->opts.n,
    };
    return ctl_create(a->dst, fmt, &co) < 0 ? -1 : 0;
}

/* The destination's unit for keep/skip decisions: its cluster, except for
 * a plain file, where holes are as fine as the file system's sectors. */
static uint32_t dst_granule(const struct img *dst, bool compress)
{
    if (!compress && strcmp(dst->fmt->name, "raw") == 0)
        return 512;
    return dst->cluster_size;
}

static void show_progress(void *ctx, uint64_t done, uint64_t total)
{
    ctl_progress_update(ctx, done, total);
}

/* ---- the command ---- */

static void close_all(struct img **imgs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        img_close(imgs[i]);
}

static int open_sources(struct convert_args *a, struct img **srcs, uint64_t *total)
{
    *total = 0;
    for (size_t i = 0; i < a->n_srcs; i++) {
        srcs[i] = ctl_open(a->srcs[i], a->src_fmt, a->force_share ? CTL_OPEN_FORCE_SHARE : 0);
        if (!srcs[i]) {
            close_all(srcs, i);
            return -1;
        }
        *total += srcs[i]->size;
    }
    return 0;
}

static const struct img_format *output_format(const struct convert_args *a)
{
    const struct img_format *fmt = ctl_format(a->out_fmt ? a->out_fmt : "raw");
    if (fmt && a->compress && !fmt->write_compressed) {
        ctl_error("Compression not supported for this file format");
        return NULL;
    }
    if (fmt && !fmt->write) {
        ctl_error("Format driver '%s' does not support writing", fmt->name);
        return NULL;
    }
    return fmt;
}

static int run_convert(struct convert_args *a, struct img **srcs, struct img *dst, bool created)
{
    struct ctl_progress prog;
    ctl_progress_init(&prog, a->progress && !a->quiet);
    struct img_convert_opts o = {
        .srcs = srcs, .n_srcs = a->n_srcs, .dst = dst,
        .dst_is_new = !a->no_create, .compress = a->compress,
        .compare_backing = a->backing != NULL, .sparse_size = a->sparse_size,
        .granule = dst_granule(dst, a->compress), .threads = a->threads,
        .progress = show_progress, .progress_ctx = &prog,
    };
    struct img_convert_error err;
    int r = img_convert(&o, &err);
    if (r == 0) {
        ctl_progress_done(&prog);
        return 0;
    }
    if (prog.enabled)
        putchar('\n');
    /* One line: the fault, then what becomes of the destination (the
     * caller removes a destination it created). */
    ctl_error("error while %s at byte %llu: %s (%s: %s)", err.writing ? "writing" : "reading",
              (unsigned long long)err.offset, err.msg, a->dst,
              created ? "removed the unfinished destination" : "left partly written");
    return -1;
}

static int convert_images(struct convert_args *a, struct img **srcs, uint64_t total)
{
    const struct img_format *fmt = output_format(a);
    if (!fmt)
        return 1;
    if (dst_is_a_source(a->dst, srcs, a->n_srcs)) {
        ctl_error("%s: the destination is also read as a source; refusing to overwrite it",
                  a->dst);
        return 1;
    }
    if (!a->no_create && (dst_in_use(a->dst) || create_dst(a, fmt, total) < 0))
        return 1;
    bool created = !a->no_create;
    struct img *dst = ctl_open(a->dst, a->out_fmt ? fmt->name : (created ? fmt->name : NULL),
                               CTL_OPEN_RW | (a->unsafe_cache ? CTL_OPEN_UNSAFE_CACHE : 0));
    int r = dst ? run_convert(a, srcs, dst, created) : -1;
    img_close(dst);
    if (r < 0 && created)
        ctl_remove_created(a->dst);
    return r < 0 ? 1 : 0;
}

static int convert_run(int argc, char **argv)
{
    struct convert_args a = { 0 };
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) {
        ctl_kvlist_free(&a.opts);
        return rc;
    }
    if (ctl_kvlist_wants_help(&a.opts)) {
        const struct img_format *fmt = ctl_format(a.out_fmt ? a.out_fmt : "raw");
        rc = fmt && ctl_print_create_options(fmt, a.dst, stdout) == 0 ? 0 : 1;
        ctl_kvlist_free(&a.opts);
        return rc;
    }
    struct img **srcs = calloc(a.n_srcs, sizeof(*srcs));
    uint64_t total;
    if (!srcs || open_sources(&a, srcs, &total) < 0) {
        free(srcs);
        ctl_kvlist_free(&a.opts);
        return 1;
    }
    rc = convert_images(&a, srcs, total);
    close_all(srcs, a.n_srcs);
    free(srcs);
    ctl_kvlist_free(&a.opts);
    return rc;
}

const struct ctl_cmd ctl_cmd_convert = {
    .name = "convert",
    .summary = "copy images (concatenated) into a new image, holes left out",
    .run = convert_run,
};
