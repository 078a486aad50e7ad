/* Drive one input through the public core API exactly as imgfs does when it
 * serves a file: img_open, the whole img_map walk, img_read_extent of the
 * data; then the driver's check, as imgctl check runs it.  Shared by the libFuzzer targets and tests/unit/test_regressions.c so
 * that a regression replays the very steps that found it. */
#include "exercise.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/format.h"
#include "core/img.h"

static char dir_path[PATH_MAX];
static const char *const part_names[FZ_MAX_PARTS] = { "a", "b", "c", "d", "e", "f" };

static void remove_dir(void)
{
    char p[PATH_MAX + 8];
    for (size_t i = 0; i < FZ_MAX_PARTS; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir_path, part_names[i]);
        unlink(p);
    }
    rmdir(dir_path);
}

/* tmpfs when there is one: the targets write every input, thousands of
 * times a second, and a disk would only add noise and wear. */
const char *fz_dir(void)
{
    if (dir_path[0])
        return dir_path;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    char tmpl[PATH_MAX];
    snprintf(tmpl, sizeof(tmpl), "%s/imgfs-fuzz-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(tmpl) || !realpath(tmpl, dir_path)) {
        perror("imgfs-fuzz: cannot create the input folder");
        abort();
    }
    atexit(remove_dir);
    return dir_path;
}

static void write_file(const char *name, const uint8_t *data, size_t size)
{
    char p[PATH_MAX + 8];
    snprintf(p, sizeof(p), "%s/%s", fz_dir(), name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(p);
        abort();
    }
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n <= 0) {
            perror(p);
            abort();
        }
        data += n;
        size -= (size_t)n;
    }
    close(fd);
}

const char *fz_write_input(const uint8_t *data, size_t size, enum fz_mode mode)
{
    static char top[PATH_MAX + 8];
    char p[PATH_MAX + 8];
    /* A sibling left over from the previous input would make this run
     * depend on history, and a crash unreproducible from its file alone. */
    for (size_t i = 0; i < FZ_MAX_PARTS; i++) {
        snprintf(p, sizeof(p), "%s/%s", fz_dir(), part_names[i]);
        unlink(p);
    }
    size_t seplen = strlen(FZ_SPLIT), i = 0;
    while (mode == FZ_SPLIT_PARTS && i + 1 < FZ_MAX_PARTS) {
        const uint8_t *sep = memmem(data, size, FZ_SPLIT, seplen);
        if (!sep)
            break;
        write_file(part_names[i++], data, (size_t)(sep - data));
        size -= (size_t)(sep - data) + seplen;
        data = sep + seplen;
    }
    write_file(part_names[i], data, size);
    snprintf(top, sizeof(top), "%s/a", fz_dir());
    return top;
}

int fz_lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0)
        close(fd);
    return fd;
}

/* strstr by hand: libFuzzer hooks the libc one and would learn the private
 * folder's name from this check, then waste mutations writing it into
 * inputs that mean nothing in another process. */
static bool contains(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] == needle[i])
            i++;
        if (i == n)
            return true;
    }
    return false;
}

/* A refusal is fine; a refusal nobody can act on is not: the convention is a
 * negative errno and a message naming the file.  1 = fine, stop here. */
static int judge_failure(const char *step, int r, const char *msg, char *why, size_t whylen)
{
    if (r < -4095)
        snprintf(why, whylen, "%s returned %d, not a negative errno (message '%s')", step, r,
                 msg);
    else if (!msg[0] || !contains(msg, fz_dir()))
        snprintf(why, whylen, "%s failed with %d (%s) and message '%s', which names no "
                 "file of %s", step, r, strerror(-r), msg, fz_dir());
    else
        return 1;
    return -1;
}

static uint8_t *chunk_buffer(void)
{
    static uint8_t *buf;
    if (!buf && !(buf = malloc(FZ_READ_CHUNK)))
        abort();
    return buf;
}

/* Read [off, off+len) of one DATA extent in chunks the buffer holds, until
 * the per-image budget runs out.  0 = go on, 1 = image refused, -1 = fault. */
static int read_data(struct img *img, uint64_t off, uint64_t len, uint64_t *budget, char *why,
                     size_t whylen)
{
    while (len > 0 && *budget > 0) {
        uint64_t want = len < FZ_READ_CHUNK ? len : FZ_READ_CHUNK;
        if (want > *budget)
            want = *budget;
        struct img_extent sub;
        int r = img_map(img, off, want, &sub);
        if (r < 0)
            return judge_failure("img_map (read)", r, img->errmsg, why, whylen);
        r = img_read_extent(&sub, chunk_buffer());
        if (r < 0)
            return judge_failure("img_read_extent", r, sub.layer->errmsg, why, whylen);
        off += sub.len;
        len -= sub.len;
        *budget -= sub.len;
    }
    return 0;
}

static int walk_map(struct img *img, char *why, size_t whylen)
{
    uint64_t off = 0, budget = FZ_READ_BUDGET;
    for (unsigned n = 0; off < img->size && n < FZ_MAX_EXTENTS; n++) {
        struct img_extent ext;
        int r = img_map(img, off, img->size - off, &ext);
        if (r < 0)
            return judge_failure("img_map", r, img->errmsg, why, whylen);
        if (ext.kind == IMG_DATA && budget > 0) {
            r = read_data(img, off, ext.len, &budget, why, whylen);
            if (r != 0)
                return r;
        }
        off += ext.len;
    }
    return 0;
}

/* `info` turns header fields into strings for imgctl: touch every byte of
 * them so that a dangling or unterminated string shows up here. */
static int touch_info(struct img *img, char *why, size_t whylen)
{
    struct img_info info;
    if (!img->fmt->info)
        return 0;
    memset(&info, 0, sizeof(info));
    int r = img->fmt->info(img, &info);
    if (r < 0)
        return judge_failure("info", r, img->errmsg, why, whylen);
    size_t total = 0;
    for (size_t i = 0; i < info.n_fields && i < IMG_INFO_MAX_FIELDS; i++) {
        total += strlen(info.fields[i].key);
        if (info.fields[i].type == IMG_INFO_STR && info.fields[i].str)
            total += strlen(info.fields[i].str);
    }
    return total == (size_t)-1;   /* keeps the loop from being optimised away */
}

/* `imgctl check` reads every table of an untrusted image too: run the
 * driver's check (no repair) and touch every line it reports. */
static void count_line(void *ctx, const char *line)
{
    *(size_t *)ctx += strlen(line);
}

static int run_check(struct img *img, char *why, size_t whylen)
{
    if (!img->fmt->check)
        return 0;
    size_t total = 0;
    struct img_check c = { .report = count_line, .report_ctx = &total };
    int r = img->fmt->check(img, &c, 0);
    if (r < 0)
        return judge_failure("check", r, img->errmsg, why, whylen);
    return 0;
}

int fz_exercise(const char *path, const char *format, char *why, size_t whylen)
{
    char err[IMG_ERRMSG_MAX] = "";
    struct img *img = NULL;
    /* force_share: QEMU's lock bytes are no parser; confine: the folder, so
     * that a hostile name cannot make the target read the host's files. */
    struct img_open_opts o = { .format = format, .force_share = true, .confine = fz_dir() };
    int r = img_open(path, &o, &img, err, sizeof(err));
    if (r < 0)
        return judge_failure("img_open", r, err, why, whylen) < 0 ? -1 : 0;
    r = touch_info(img, why, whylen);
    if (r == 0)
        r = walk_map(img, why, whylen);
    if (r == 0)
        r = run_check(img, why, whylen);
    img_close(img);
    return r < 0 ? -1 : 0;
}

int fz_exercise_and_probe(const char *path, const char *format, char *why, size_t whylen)
{
    const char *probed = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        probed = img_probe_name(fd, path);
        close(fd);
    }
    int r = fz_exercise(path, format, why, whylen);
    if (r == 0 && format && probed && strcmp(probed, format) != 0)
        r = fz_exercise(path, NULL, why, whylen);
    return r;
}
