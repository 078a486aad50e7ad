/* Shared imgctl helpers; see common.h for the contracts. */
#include "ctl/common.h"
#include "core/json.h"

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

/* The options of a create, as the driver describes them (core/format.h):
 * the format's own, then those of the host file that the format does not
 * take over.  That is the order of qemu-img's Formatting line.  Returns how
 * many, 0 when the driver has no list. */
#define MAX_CREATE_OPTIONS 64
static size_t create_options_all(const struct img_format *fmt,
                                 const struct img_create_option **out)
{
    size_t n = 0;
    if (!fmt->create_options)
        return 0;
    for (const struct img_create_option *o = fmt->create_options;
         o->name && n < MAX_CREATE_OPTIONS; o++)
        out[n++] = o;
    size_t own = n;
    for (const struct img_create_option *o = img_file_create_options;
         o->name && n < MAX_CREATE_OPTIONS; o++) {
        size_t i = 0;
        while (i < own && strcmp(out[i]->name, o->name) != 0)
            i++;
        if (i == own)
            out[n++] = o;
    }
    return n;
}

static int by_name(const void *a, const void *b)
{
    const struct img_create_option *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

int ctl_print_create_options(const struct img_format *fmt, const char *path, FILE *out)
{
    const struct img_create_option *list[MAX_CREATE_OPTIONS];
    size_t n = create_options_all(fmt, list);
    if (n == 0)
        return -1;
    /* Without a file name qemu-img shows only the format's options and
     * says where the others come from; with one, everything together. */
    if (!path) {
        n = 0;
        while (fmt->create_options[n].name && n < MAX_CREATE_OPTIONS)
            n++;
    }
    qsort(list, n, sizeof(list[0]), by_name);   /* qemu-img lists them by name */
    if (path)
        fputs("Supported options:\n", out);
    else
        fprintf(out, "Supported %s options:\n", fmt->name);
    for (size_t i = 0; i < n; i++) {
        char head[96];
        snprintf(head, sizeof(head), "%s=<%s>", list[i]->name, list[i]->type);
        fprintf(out, "  %-22s - %s\n", head, list[i]->help);
    }
    if (!path)
        fputs("\nThe protocol level may support further options.\n"
              "Specify the target filename to include those options.\n", out);
    return 0;
}

int ctl_check_create_options(const struct img_format *fmt, const struct ctl_kvlist *l,
                             const char *path)
{
    const struct img_create_option *list[MAX_CREATE_OPTIONS];
    size_t n = create_options_all(fmt, list);
    for (size_t i = 0; n && i < l->n; i++) {
        size_t j = 0;
        while (j < n && strcmp(list[j]->name, l->kv[i].key) != 0)
            j++;
        if (j == n) {
            ctl_error("%s: Invalid parameter '%s'", path, l->kv[i].key);
            return -1;
        }
        uint64_t bytes;
        if (strcmp(list[j]->type, "size") == 0 && img_parse_size(l->kv[i].value, &bytes) < 0) {
            ctl_error("%s: Parameter '%s' expects a size, not '%s'", path, list[j]->name,
                      l->kv[i].value);
            return -1;
        }
    }
    return 0;
}

static const char *create_opt_value(const struct img_create_opts *o, const char *key)
{
    for (size_t i = o->n_opts; i-- > 0;)
        if (strcmp(o->opts[i].key, key) == 0)
            return o->opts[i].value;
    return NULL;
}

/* One "key=value" of the Formatting line, the value normalised as qemu-img
 * prints it: sizes and numbers parsed ("cluster_size=4k" shows as 4096,
 * "refcount_bits=0x10" as 16), a comma in a string doubled so that the line
 * reads back as an option list. */
static void print_formatting_opt(FILE *out, const struct img_create_option *opt,
                                 const struct img_create_opts *o)
{
    const char *v = create_opt_value(o, opt->name);
    if (strcmp(opt->name, "size") == 0) {
        fprintf(out, " size=%llu", (unsigned long long)o->size);
        return;
    }
    if (strcmp(opt->name, "backing_file") == 0 && o->backing_file)
        v = o->backing_file;
    if (strcmp(opt->name, "backing_fmt") == 0 && o->backing_fmt)
        v = o->backing_fmt;
    bool given = v != NULL;
    if (!v)
        v = opt->shown;
    if (!v)
        return;
    uint64_t bytes;
    char *end;
    if (given && strcmp(opt->type, "size") == 0 && img_parse_size(v, &bytes) == 0) {
        fprintf(out, " %s=%llu", opt->name, (unsigned long long)bytes);
        return;
    }
    if (given && strcmp(opt->type, "num") == 0) {
        errno = 0;
        unsigned long long num = strtoull(v, &end, 0);
        if (*v && !*end && errno == 0) {
            fprintf(out, " %s=%llu", opt->name, num);
            return;
        }
    }
    fprintf(out, " %s=", opt->name);
    bool is_str = strcmp(opt->type, "str") == 0;
    for (const char *c = v; *c; c++) {
        if (is_str && *c == ',')
            fputc(',', out);
        fputc(*c, out);
    }
}

void ctl_print_formatting(FILE *out, const char *path, const struct img_format *fmt,
                          const struct img_create_opts *o)
{
    /* A driver without a list: what every create carries. */
    static const struct img_create_option fallback[] = {
        { "size", "size", "", NULL }, { "backing_file", "str", "", NULL },
        { "backing_fmt", "str", "", NULL },
    };
    const struct img_create_option *list[MAX_CREATE_OPTIONS];
    size_t n = create_options_all(fmt, list);
    if (n == 0)
        for (; n < sizeof(fallback) / sizeof(fallback[0]); n++)
            list[n] = &fallback[n];
    fprintf(out, "Formatting '%s', fmt=%s", path, fmt->name);
    for (size_t i = 0; i < n; i++)
        print_formatting_opt(out, list[i], o);
    fputc('\n', out);
}

/* ---- JSON ---- */

void ctl_json_string(FILE *out, const char *s)
{
    img_json_string(out, s);
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

bool ctl_allow_outside;

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

int ctl_parse_cache(const char *mode, bool *unsafe)
{
    static const char *const modes[] = { "none", "off", "writeback", "writethrough",
                                         "directsync", "unsafe", NULL };
    for (const char *const *m = modes; *m; m++)
        if (strcmp(mode, *m) == 0) {
            *unsafe = strcmp(mode, "unsafe") == 0;
            return 0;
        }
    ctl_error("Invalid cache option: %s", mode);
    return -1;
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
        .unsafe_cache = flags & CTL_OPEN_UNSAFE_CACHE,
        .allow_outside = ctl_allow_outside,
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

char *ctl_backing_name(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    if (backing[0] == '/' || !slash)
        return strdup(backing);
    char *name;
    if (asprintf(&name, "%.*s%s", (int)(slash - image + 1), image, backing) < 0)
        return NULL;
    return name;
}
