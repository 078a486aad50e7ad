/* Helpers shared by test_vdi.c and test_vhd.c: a scratch folder per test,
 * shell commands run in it, qemu-img's map and raw output as the oracle,
 * and the real images of ../shared/testdata/real.  Everything is static:
 * each test file gets its own copy. */
#ifndef IMGFS_TEST_VDI_VHD_UTIL_H
#define IMGFS_TEST_VDI_VHD_UTIL_H

#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/bytes.h"
#include "core/format.h"
#include "core/img.h"

static char tdir[PATH_MAX];

static void tdir_make(void)
{
    snprintf(tdir, sizeof(tdir), "/tmp/imgfs-vdivhd-XXXXXX");
    cr_assert_not_null(mkdtemp(tdir));
}

static void tdir_remove(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", tdir);
}

static const char *tpath(const char *name)
{
    static char paths[4][PATH_MAX + 64];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof(paths[0]), "%s/%s", tdir, name);
    return p;
}

/* Run a shell command in the scratch folder; it must succeed. */
static void tsh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void tsh(const char *fmt, ...)
{
    char body[4096], cmd[4096 + PATH_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "cd '%s' && (%s) >/dev/null 2>&1", tdir, body);
    int rc = system(cmd);
    cr_assert_eq(rc, 0, "command failed (%d): %s", rc, body);
}

/* Standard output of a command run in the scratch folder (malloc'd). */
static char *tcapture(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *tcapture(const char *fmt, ...)
{
    char body[4096], cmd[4096 + PATH_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "cd '%s' && (%s)", tdir, body);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    cr_assert_not_null(out);
    size_t n;
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            out = realloc(out, cap);
            cr_assert_not_null(out);
        }
    }
    out[len] = '\0';
    cr_assert_eq(pclose(p), 0, "command failed: %s", body);
    return out;
}

static void twrite(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0, "cannot create %s", path);
    cr_assert_eq(pwrite(fd, buf, len, 0), (ssize_t)len);
    close(fd);
}

static void tpwrite(const char *path, const void *buf, size_t len, off_t off)
{
    int fd = open(path, O_WRONLY);
    cr_assert_geq(fd, 0, "cannot open %s", path);
    cr_assert_eq(pwrite(fd, buf, len, off), (ssize_t)len);
    close(fd);
}

/* Open with an explicit format (NULL = probe); returns NULL and fills err
 * on failure. */
static struct img *topen(const char *path, const char *format, char *err, size_t errlen)
{
    struct img_open_opts o = { .format = format, .force_share = true };
    struct img *img = NULL;
    err[0] = '\0';
    if (img_open(path, &o, &img, err, errlen) < 0)
        return NULL;
    return img;
}

/* Open must fail with a message containing `needle`. */
__attribute__((unused))
static void texpect_refused(const char *path, const char *format, const char *needle)
{
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(path, format, err, sizeof(err));
    if (img)
        img_close(img);
    cr_assert_null(img, "%s opened, expected a refusal with '%s'", path, needle);
    cr_expect_not_null(strstr(err, needle), "message '%s' lacks '%s'", err, needle);
    cr_expect_null(strchr(err, '\n'), "message is not one line: '%s'", err);
}

/* ---- data ranges: ours from img_map, qemu's from map --output=json ---- */

struct trange {
    uint64_t off, len;
};

struct tranges {
    struct trange *r;
    size_t n, cap;
};

/* Add a range, joining it to the previous one when they touch. */
static void tranges_add(struct tranges *rs, uint64_t off, uint64_t len)
{
    if (rs->n && rs->r[rs->n - 1].off + rs->r[rs->n - 1].len == off) {
        rs->r[rs->n - 1].len += len;
        return;
    }
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? rs->cap * 2 : 64;
        rs->r = realloc(rs->r, rs->cap * sizeof(*rs->r));
        cr_assert_not_null(rs->r);
    }
    rs->r[rs->n++] = (struct trange){ off, len };
}

static struct tranges our_data_ranges(struct img *img)
{
    struct tranges rs = { 0 };
    uint64_t off = 0;
    while (off < img->size) {
        struct img_extent e;
        int r = img_map(img, off, img->size - off, &e);
        cr_assert_eq(r, 0, "img_map at %llu: %s", (unsigned long long)off, img->errmsg);
        cr_assert_gt(e.len, 0);
        if (e.kind == IMG_DATA)
            tranges_add(&rs, e.off, e.len);
        off += e.len;
    }
    return rs;
}

/* qemu-img map --output=json prints one object per extent. */
static struct tranges qemu_data_ranges(const char *json)
{
    struct tranges rs = { 0 };
    for (const char *p = strstr(json, "\"start\":"); p; p = strstr(p + 1, "\"start\":")) {
        unsigned long long start = strtoull(p + 8, NULL, 10);
        const char *l = strstr(p, "\"length\":");
        const char *d = strstr(p, "\"data\":");
        cr_assert(l && d, "unexpected map json near: %.80s", p);
        unsigned long long len = strtoull(l + 9, NULL, 10);
        if (strncmp(d + 7 + strspn(d + 7, " "), "true", 4) == 0)
            tranges_add(&rs, start, len);
    }
    return rs;
}

static void texpect_same_ranges(struct tranges ours, struct tranges qemu, const char *what)
{
    cr_expect_eq(ours.n, qemu.n, "%s: %zu data ranges, qemu has %zu", what, ours.n, qemu.n);
    for (size_t i = 0; i < ours.n && i < qemu.n; i++)
        cr_expect(ours.r[i].off == qemu.r[i].off && ours.r[i].len == qemu.r[i].len,
                  "%s: data range %zu is %llu+%llu, qemu says %llu+%llu", what, i,
                  (unsigned long long)ours.r[i].off, (unsigned long long)ours.r[i].len,
                  (unsigned long long)qemu.r[i].off, (unsigned long long)qemu.r[i].len);
    free(ours.r);
    free(qemu.r);
}

/* Our data ranges against `qemu-img map --output=json` run on the image. */
static void texpect_map_like_qemu(struct img *img, const char *name, const char *format)
{
    char *json = tcapture("qemu-img map -U -f %s --output=json '%s'", format, name);
    texpect_same_ranges(our_data_ranges(img), qemu_data_ranges(json), name);
    free(json);
}

/* Every byte read through img_read against `qemu-img convert -O raw`. */
static void texpect_bytes_like_qemu(struct img *img, const char *name, const char *format)
{
    tsh("qemu-img convert -U -f %s -O raw '%s' '%s.qemu.raw'", format, name, name);
    char raw[PATH_MAX + 64];
    snprintf(raw, sizeof(raw), "%s/%s.qemu.raw", tdir, name);
    int fd = open(raw, O_RDONLY);
    cr_assert_geq(fd, 0);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    cr_assert_eq((uint64_t)st.st_size, img->size, "%s: size %llu, qemu %lld", name,
                 (unsigned long long)img->size, (long long)st.st_size);
    size_t chunk = 1 << 20;
    uint8_t *a = malloc(chunk), *b = malloc(chunk);
    cr_assert(a && b);
    for (uint64_t off = 0; off < img->size; off += chunk) {
        size_t n = img->size - off < chunk ? (size_t)(img->size - off) : chunk;
        cr_assert_eq(img_read(img, a, n, off), 0, "img_read: %s", img->errmsg);
        cr_assert_eq(pread(fd, b, n, (off_t)off), (ssize_t)n);
        cr_assert(memcmp(a, b, n) == 0, "%s: bytes differ in %llu+%zu", name,
                  (unsigned long long)off, n);
    }
    free(a);
    free(b);
    close(fd);
}

static void tsha256_hex(struct img *img, char hex[65])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    cr_assert_not_null(ctx);
    cr_assert_eq(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
    size_t chunk = 1 << 20;
    uint8_t *buf = malloc(chunk);
    cr_assert_not_null(buf);
    for (uint64_t off = 0; off < img->size; off += chunk) {
        size_t n = img->size - off < chunk ? (size_t)(img->size - off) : chunk;
        cr_assert_eq(img_read(img, buf, n, off), 0, "img_read: %s", img->errmsg);
        EVP_DigestUpdate(ctx, buf, n);
    }
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    free(buf);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* ---- the real images ---- */

/* ../shared next to the repository (tests run from the repo root, as
 * `make test` runs them); SHARED_DIR overrides. */
static const char *shared_dir(void)
{
    static char path[PATH_MAX];
    const char *env = getenv("SHARED_DIR");
    if (env && *env)
        return env;
    FILE *p = popen("git rev-parse --show-toplevel 2>/dev/null", "r");
    char top[PATH_MAX - 16] = "";
    if (p) {
        if (!fgets(top, sizeof(top), p))
            top[0] = '\0';
        pclose(p);
    }
    top[strcspn(top, "\n")] = '\0';
    if (!top[0])
        return "/work/shared";
    snprintf(path, sizeof(path), "%s/../shared", top);
    return path;
}

struct real_entry {
    char status[16];
    uint64_t size;
    char sha_raw[65];
    char notes[2048];
};

/* The manifest line of `file` (as stored, e.g. "dissect/basic.vdi.xz"). */
static bool manifest_entry(const char *file, struct real_entry *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/testdata/real/manifest.tsv", shared_dir());
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[8192];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f)) {
        char *cols[16] = { 0 };
        int n = 0;
        for (char *save = line, *c; n < 16 && (c = strsep(&save, "\t\n")); )
            cols[n++] = c;
        if (n < 15 || strcmp(cols[0], file) != 0)
            continue;
        memset(e, 0, sizeof(*e));
        snprintf(e->status, sizeof(e->status), "%s", cols[10]);
        e->size = strtoull(cols[6], NULL, 10);
        snprintf(e->sha_raw, sizeof(e->sha_raw), "%s", cols[7]);
        snprintf(e->notes, sizeof(e->notes), "%s", cols[14]);
        found = true;
    }
    fclose(f);
    return found;
}

/* Copy (decompressing) a stored real image into the scratch folder; returns
 * its name there, or NULL when the shared test data is absent. */
static const char *fetch_real(const char *file)
{
    static char name[PATH_MAX];
    char src[PATH_MAX];
    snprintf(src, sizeof(src), "%s/testdata/real/%s", shared_dir(), file);
    if (access(src, R_OK) != 0)
        return NULL;
    const char *base = strrchr(file, '/') ? strrchr(file, '/') + 1 : file;
    snprintf(name, sizeof(name), "%s", base);
    size_t n = strlen(name);
    if (n > 3 && strcmp(name + n - 3, ".xz") == 0) {
        name[n - 3] = '\0';
        tsh("xz -dc '%s' > '%s'", src, name);
    } else if (n > 4 && strcmp(name + n - 4, ".bz2") == 0) {
        name[n - 4] = '\0';
        tsh("bzip2 -dc '%s' > '%s'", src, name);
    } else {
        tsh("cp '%s' '%s'", src, name);
    }
    return name;
}

/* qemu's stored map of a real image: FILE without its compression suffix
 * + ".map.json". */
static char *real_map_json(const char *file)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/testdata/real/%s", shared_dir(), file);
    char *dot = strrchr(path, '.');
    if (dot && (strcmp(dot, ".xz") == 0 || strcmp(dot, ".bz2") == 0))
        *dot = '\0';
    strncat(path, ".map.json", sizeof(path) - strlen(path) - 1);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "missing %s", path);
    char *buf = calloc(1, 1 << 20);
    cr_assert_not_null(buf);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Small images are hashed through img_read; a 127 GiB empty one would take
 * minutes, so above this only its size and map are compared. */
#define HASH_LIMIT (64ull << 20)

/* A real image that qemu reads: size, bytes (sha256 of img_read) and, when
 * `compare_map`, the data ranges of qemu's stored map. */
static void texpect_real_ok(const char *file, const char *format, uint64_t size,
                            const char *sha, bool compare_map)
{
    const char *name = fetch_real(file);
    if (!name)
        cr_skip_test("no shared test data (%s)", shared_dir());
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath(name), format, err, sizeof(err));
    cr_assert_not_null(img, "%s: %s", file, err);
    cr_expect_eq(img->size, size, "%s: size %llu, manifest %llu", file,
                 (unsigned long long)img->size, (unsigned long long)size);
    if (size <= HASH_LIMIT) {
        char hex[65];
        tsha256_hex(img, hex);
        cr_expect_str_eq(hex, sha, "%s: sha256 of the raw view", file);
    }
    if (compare_map) {
        char *json = real_map_json(file);
        texpect_same_ranges(our_data_ranges(img), qemu_data_ranges(json), file);
        free(json);
    }
    img_close(img);
}

__attribute__((unused))
static void texpect_real_from_manifest(const char *file, const char *format, bool compare_map)
{
    struct real_entry e;
    if (!manifest_entry(file, &e))
        cr_skip_test("no manifest entry for %s", file);
    cr_assert_str_eq(e.status, "ok");
    texpect_real_ok(file, format, e.size, e.sha_raw, compare_map);
}

#endif
