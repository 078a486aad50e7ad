/* Shared imgctl helpers; see common.h for the contracts. */
#include "ctl/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- messages ---- */

static void vprint_error(const char *fmt, va_list ap)
{
    fflush(stdout);   /* keep the order when both go to one terminal */
    fputs("imgctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void ctl_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint_error(fmt, ap);
    va_end(ap);
}

int ctl_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprint_error(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try 'imgctl %s --help' for more information.\n", cmd);
    return 1;
}

/* ---- option parsing ---- */

void ctl_getopt_reset(void)
{
    optind = 0;   /* glibc: 0 also resets its internal state */
}

int ctl_getopt(int argc, char **argv, const char *shortopts,
               const struct option *longopts)
{
    /* A leading ':' makes getopt report a missing argument as ':' and keep
     * quiet, so that the messages below are the only ones. */
    char quiet[64];
    snprintf(quiet, sizeof(quiet), ":%s", shortopts);
    opterr = 0;
    int c = getopt_long(argc, argv, quiet, longopts, NULL);
    if (c == ':') {
        ctl_usage_error(argv[0], "missing argument for option '%s'", argv[optind - 1]);
        return '?';
    }
    if (c == '?') {
        if (optopt)
            ctl_usage_error(argv[0], "unrecognized option '-%c'", optopt);
        else
            ctl_usage_error(argv[0], "unrecognized option '%s'", argv[optind - 1]);
        return '?';
    }
    return c;
}

int ctl_parse_output(const char *arg, enum ctl_output *out)
{
    if (strcmp(arg, "json") == 0) {
        *out = CTL_OUTPUT_JSON;
        return 0;
    }
    if (strcmp(arg, "human") == 0) {
        *out = CTL_OUTPUT_HUMAN;
        return 0;
    }
    ctl_error("--output must be used with human or json as argument.");
    return -1;
}

/* ---- sizes ---- */

char *ctl_human_size(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    /* Step up a unit only from 1000 of the smaller one, so that 1000 bytes
     * read "0.977 KiB" and no number has more than three digits. */
    long double scaled = (long double)bytes * 1.024L;
    int unit = 0;
    while (unit < 6 && scaled >= 1024.0L) {
        scaled /= 1024.0L;
        unit++;
    }
    double value = (double)bytes / (double)(UINT64_C(1) << (10 * unit));
    snprintf(buf, len, "%0.3g %sB", value, units[unit]);
    return buf;
}

/* ---- -o option lists ---- */

static int kvlist_append(const char *key, const char *value, void *ctx)
{
    struct ctl_kvlist *l = ctx;
    struct img_kv *kv = realloc(l->kv, (l->n + 1) * sizeof(*kv));
    if (!kv)
        return -ENOMEM;
    l->kv = kv;
    l->kv[l->n].key = key;
    l->kv[l->n].value = value;
    l->n++;
    return 0;
}

int ctl_kvlist_add(struct ctl_kvlist *l, const char *arg)
{
    char **owned = realloc(l->owned, (l->n_owned + 1) * sizeof(*owned));
    if (!owned) {
        ctl_error("out of memory");
        return -1;
    }
    l->owned = owned;
    char *buf = strdup(arg);
    if (!buf) {
        ctl_error("out of memory");
        return -1;
    }
    l->owned[l->n_owned++] = buf;
    int r = img_split_options(buf, kvlist_append, l);
    if (r == -EINVAL)
        ctl_error("Invalid option list: %s", arg);
    else if (r < 0)
        ctl_error("out of memory");
    return r < 0 ? -1 : 0;
}

const char *ctl_kvlist_get(const struct ctl_kvlist *l, const char *key)
{
    for (size_t i = l->n; i-- > 0;)
        if (strcmp(l->kv[i].key, key) == 0)
            return l->kv[i].value;
    return NULL;
}

bool ctl_kvlist_wants_help(const struct ctl_kvlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->kv[i].key, "help") == 0 || strcmp(l->kv[i].key, "?") == 0)
            return true;
    return false;
}

void ctl_kvlist_free(struct ctl_kvlist *l)
{
    for (size_t i = 0; i < l->n_owned; i++)
        free(l->owned[i]);
    free(l->owned);
    free(l->kv);
    memset(l, 0, sizeof(*l));
}

/* The option lists of `qemu-img create -f FMT -o help`, for the formats we
 * can create; a driver that accepts more must add its line here. */
struct create_option {
    const char *name, *type, *help;
};

static const struct create_option raw_options[] = {
    { "preallocation", "str", "Preallocation mode (allowed values: off, falloc, full)" },
    { "size", "size", "Virtual disk size" },
    { NULL, NULL, NULL },
};

static const struct create_option qcow2_options[] = {
    { "backing_file", "str", "File name of a base image" },
    { "backing_fmt", "str", "Image format of the base image" },
    { "cluster_size", "size", "qcow2 cluster size" },
    { "compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])" },
    { "compression_type", "str", "Compression method used for image cluster compression" },
    { "data_file", "str", "File name of an external data file" },
    { "extended_l2", "bool (on/off)", "Extended L2 tables" },
    { "lazy_refcounts", "bool (on/off)", "Postpone refcount updates" },
    { "preallocation", "str", "Preallocation mode (allowed values: off, metadata)" },
    { "refcount_bits", "number", "Width of a reference count entry in bits" },
    { "size", "size", "Virtual disk size" },
    { NULL, NULL, NULL },
};

int ctl_print_create_options(const struct img_format *fmt, FILE *out)
{
    const struct create_option *list = NULL;
    if (strcmp(fmt->name, "raw") == 0)
        list = raw_options;
    else if (strcmp(fmt->name, "qcow2") == 0)
        list = qcow2_options;
    if (!list)
        return -1;
    fprintf(out, "Supported options:\n");
    for (; list->name; list++) {
        char head[64];
        snprintf(head, sizeof(head), "%s=<%s>", list->name, list->type);
        fprintf(out, "  %-22s - %s\n", head, list->help);
    }
    return 0;
}

/* ---- JSON ---- */

void ctl_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':  fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\b': fputs("\\b", out); break;
        case '\f': fputs("\\f", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(out, "\\u%04X", *p);
            else
                fputc(*p, out);
        }
    }
    fputc('"', out);
}

void ctl_json_init(struct ctl_json *j, FILE *out)
{
    memset(j, 0, sizeof(*j));
    j->out = out;
}

static void indent(struct ctl_json *j)
{
    for (int i = 0; i < j->depth; i++)
        fputs("    ", j->out);
}

/* Start a member or element: the comma after the previous one, a new line,
 * the indent and the key. */
static void member(struct ctl_json *j, const char *key)
{
    if (j->depth > 0) {
        fputs(j->has_members[j->depth] ? ",\n" : "\n", j->out);
        j->has_members[j->depth] = true;
        indent(j);
    }
    if (key) {
        ctl_json_string(j->out, key);
        fputs(": ", j->out);
    }
}

static void open_container(struct ctl_json *j, const char *key, char bracket)
{
    member(j, key);
    fputc(bracket, j->out);
    if (j->depth + 1 < CTL_JSON_MAX_DEPTH)
        j->depth++;
    j->has_members[j->depth] = false;
}

static void close_container(struct ctl_json *j, char bracket)
{
    bool had = j->has_members[j->depth];
    if (j->depth > 0)
        j->depth--;
    if (had) {
        fputc('\n', j->out);
        indent(j);
    }
    fputc(bracket, j->out);
}

void ctl_json_begin_object(struct ctl_json *j, const char *key) { open_container(j, key, '{'); }
void ctl_json_end_object(struct ctl_json *j) { close_container(j, '}'); }
void ctl_json_begin_array(struct ctl_json *j, const char *key) { open_container(j, key, '['); }
void ctl_json_end_array(struct ctl_json *j) { close_container(j, ']'); }

void ctl_json_str(struct ctl_json *j, const char *key, const char *val)
{
    member(j, key);
    ctl_json_string(j->out, val);
}

void ctl_json_int(struct ctl_json *j, const char *key, int64_t val)
{
    member(j, key);
    fprintf(j->out, "%lld", (long long)val);
}

void ctl_json_uint(struct ctl_json *j, const char *key, uint64_t val)
{
    member(j, key);
    fprintf(j->out, "%llu", (unsigned long long)val);
}

void ctl_json_bool(struct ctl_json *j, const char *key, bool val)
{
    member(j, key);
    fputs(val ? "true" : "false", j->out);
}

void ctl_json_finish(struct ctl_json *j)
{
    fputc('\n', j->out);
}

/* ---- progress ---- */

static void progress_draw(struct ctl_progress *p, int hundredths)
{
    printf("    (%d.%02d/100%%)\r", hundredths / 100, hundredths % 100);
    fflush(stdout);
    p->last_drawn = hundredths;
}

void ctl_progress_init(struct ctl_progress *p, bool requested)
{
    p->enabled = requested && isatty(STDOUT_FILENO);
    p->last_drawn = -1;
    if (p->enabled)
        progress_draw(p, 0);
}

void ctl_progress_update(struct ctl_progress *p, uint64_t done, uint64_t total)
{
    if (!p->enabled)
        return;
    int h = total ? (int)((long double)done * 10000 / total) : 10000;
    if (h > 10000)
        h = 10000;
    /* Redraw only on a visible change: a terminal is slow to scroll. */
    if (h - p->last_drawn >= 1)
        progress_draw(p, h);
}

void ctl_progress_done(struct ctl_progress *p)
{
    if (!p->enabled)
        return;
    progress_draw(p, 10000);
    putchar('\n');
    p->enabled = false;
}

/* ---- images ---- */

const struct img_format *ctl_format(const char *name)
{
    const struct img_format *fmt = img_format_by_name(name);
    if (!fmt)
        ctl_error("Unknown file format '%s'", name);
    return fmt;
}

/* img_open's message starts with the path; the caller's message already
 * names the file, so drop the repeat. */
static const char *without_path(const char *msg, const char *path)
{
    size_t n = strlen(path);
    if (strncmp(msg, path, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ')
        return msg + n + 2;
    return msg;
}

struct img *ctl_open(const char *path, const char *format, unsigned flags)
{
    if (format && !ctl_format(format))
        return NULL;
    struct img_open_opts o = {
        .format = format,
        .read_write = flags & CTL_OPEN_RW,
        .force_share = flags & CTL_OPEN_FORCE_SHARE,
        .no_backing = flags & CTL_OPEN_NO_BACKING,
        .allow_outside = true,
    };
    struct img *img;
    char err[IMG_ERRMSG_MAX + 64];
    if (img_open(path, &o, &img, err, sizeof(err)) < 0) {
        ctl_error("Could not open '%s': %s", path, without_path(err, path));
        return NULL;
    }
    return img;
}

int ctl_create(const char *path, const struct img_format *fmt,
               const struct img_create_opts *o)
{
    if (!fmt->create) {
        ctl_error("Format driver '%s' does not support image creation", fmt->name);
        return -ENOTSUP;
    }
    struct stat st;
    bool existed = lstat(path, &st) == 0;
    char err[IMG_ERRMSG_MAX] = "";
    int r = fmt->create(path, o, err, sizeof(err));
    if (r < 0) {
        ctl_error("%s: %s", path, err[0] ? without_path(err, path) : strerror(-r));
        if (!existed)
            ctl_remove_created(path);
    }
    return r;
}

void ctl_remove_created(const char *path)
{
    if (unlink(path) < 0 && errno != ENOENT)
        ctl_error("%s: could not remove the unfinished file: %s", path, strerror(errno));
}
