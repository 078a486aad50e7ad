/* core/: the chain walk, reads through a chain, data-byte counting, probing,
 * the raw driver, QEMU lock bytes and confinement of referenced files. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/format.h"
#include "core/img.h"

/* ---- a scripted layer: a list of extents with a fill byte each ---- */

struct fake_run {
    uint64_t len;
    enum img_kind kind;
    uint8_t fill;      /* byte value of DATA */
};

struct fake_layer {
    const struct fake_run *runs;
    size_t n;
};

static int fake_map(struct img *img, uint64_t off, uint64_t len, struct img_extent *ext)
{
    const struct fake_layer *f = img->priv;
    uint64_t start = 0;
    for (size_t i = 0; i < f->n; i++) {
        uint64_t end = start + f->runs[i].len;
        if (off < end) {
            ext->off = off;
            ext->len = end - off < len ? end - off : len;
            ext->kind = f->runs[i].kind;
            ext->fd = -1;
            return 0;
        }
        start = end;
    }
    return img_error(img, EIO, "fake map past its runs");
}

static int fake_read(struct img *img, void *buf, size_t len, uint64_t off)
{
    const struct fake_layer *f = img->priv;
    uint64_t start = 0;
    for (size_t i = 0; i < f->n; i++) {
        uint64_t end = start + f->runs[i].len;
        if (off >= start && off + len <= end) {
            memset(buf, f->runs[i].fill, len);
            return 0;
        }
        start = end;
    }
    return img_error(img, EIO, "read crosses runs");
}

static const struct img_format fake_format = {
    .name = "fake", .map = fake_map, .read = fake_read,
};

static struct img *fake_img(const char *name, const struct fake_layer *layer, uint64_t size)
{
    struct img *img = calloc(1, sizeof(*img));
    img->path = strdup(name);
    img->fmt = &fake_format;
    img->fd = -1;
    img->lock.fd = -1;
    img->size = size;
    img->priv = (void *)layer;
    return img;
}

static void fake_free(struct img *img)
{
    while (img) {
        struct img *b = img->backing;
        free(img->path);
        free(img);
        img = b;
    }
}

#define K 1024ull

/* top:  [0,4K) DATA 0xaa  [4K,8K) UNALLOC  [8K,12K) ZERO  [12K,16K) UNALLOC
 * base: [0,6K) DATA 0xbb  [6K,10K) UNALLOC                (base is 10K long) */
static const struct fake_run top_runs[] = {
    { 4 * K, IMG_DATA, 0xaa }, { 4 * K, IMG_UNALLOCATED, 0 },
    { 4 * K, IMG_ZERO, 0 }, { 4 * K, IMG_UNALLOCATED, 0 },
};
static const struct fake_run base_runs[] = {
    { 6 * K, IMG_DATA, 0xbb }, { 4 * K, IMG_UNALLOCATED, 0 },
};
static const struct fake_layer top_layer = { top_runs, 4 };
static const struct fake_layer base_layer = { base_runs, 2 };

static struct img *two_layer_chain(void)
{
    struct img *top = fake_img("top", &top_layer, 16 * K);
    top->backing = fake_img("base", &base_layer, 10 * K);
    top->backing->depth = 1;
    return top;
}

Test(chain, map_walks_to_the_backing_layer)
{
    struct img *top = two_layer_chain();
    struct img_extent e;

    cr_assert_eq(img_map(top, 0, 16 * K, &e), 0);
    cr_expect(e.kind == IMG_DATA && e.len == 4 * K && e.depth == 0);

    cr_assert_eq(img_map(top, 4 * K, 12 * K, &e), 0);
    cr_expect(e.kind == IMG_DATA && e.len == 2 * K && e.depth == 1,
              "top's hole shows base data: kind %d len %llu depth %u", e.kind,
              (unsigned long long)e.len, e.depth);

    cr_assert_eq(img_map(top, 6 * K, 10 * K, &e), 0);
    cr_expect(e.kind == IMG_UNALLOCATED && e.len == 2 * K && e.depth == 1,
              "unallocated in both layers is clipped to top's run");

    cr_assert_eq(img_map(top, 8 * K, 8 * K, &e), 0);
    cr_expect(e.kind == IMG_ZERO && e.len == 4 * K && e.depth == 0,
              "ZERO in the top hides the backing layer");

    /* past the end of the shorter base: zeros, without asking it */
    cr_assert_eq(img_map(top, 12 * K, 4 * K, &e), 0);
    cr_expect(e.kind == IMG_UNALLOCATED && e.len == 4 * K && e.depth == 1);
    fake_free(top);
}

Test(chain, map_refuses_ranges_past_the_size)
{
    struct img *top = two_layer_chain();
    struct img_extent e;
    cr_expect_eq(img_map(top, 16 * K, 1, &e), -EINVAL);
    cr_expect_eq(img_map(top, 0, 0, &e), -EINVAL);
    cr_expect_eq(img_map(top, 15 * K, 2 * K, &e), -EINVAL);
    cr_expect(strstr(top->errmsg, "top:") == top->errmsg, "message names the image: %s",
              top->errmsg);
    fake_free(top);
}

Test(chain, read_assembles_all_layers)
{
    struct img *top = two_layer_chain();
    uint8_t buf[16 * K], want[16 * K];
    memset(want, 0, sizeof(want));
    memset(want, 0xaa, 4 * K);
    memset(want + 4 * K, 0xbb, 2 * K);
    memset(buf, 0x55, sizeof(buf));
    cr_assert_eq(img_read(top, buf, sizeof(buf), 0), 0);
    cr_expect_arr_eq(buf, want, sizeof(want));

    /* an unaligned read that straddles three extents */
    memset(buf, 0x55, sizeof(buf));
    cr_assert_eq(img_read(top, buf, 5 * K, 3 * K + 7), 0);
    cr_expect_arr_eq(buf, want + 3 * K + 7, 5 * K);
    fake_free(top);
}

Test(chain, data_bytes_counts_data_of_every_layer)
{
    struct img *top = two_layer_chain();
    uint64_t bytes = 0;
    cr_assert_eq(img_data_bytes(top, &bytes), 0);
    cr_expect_eq(bytes, 6 * K, "4K of top + 2K of base visible, got %llu",
                 (unsigned long long)bytes);
    fake_free(top);
}

Test(chain, a_failing_backing_layer_reports_its_own_name)
{
    static const struct fake_run short_runs[] = { { 1 * K, IMG_UNALLOCATED, 0 } };
    static const struct fake_layer broken = { short_runs, 1 };
    struct img *top = fake_img("top", &top_layer, 16 * K);
    top->backing = fake_img("broken-base", &broken, 16 * K);
    uint8_t buf[16 * K];
    cr_expect_eq(img_read(top, buf, sizeof(buf), 0), -EIO);
    cr_expect(strstr(top->errmsg, "broken-base: fake map past its runs") != NULL,
              "got '%s'", top->errmsg);
    fake_free(top);
}

/* ---- the raw driver and img_open on real files ---- */

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/imgfs-core-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_expect_eq(system(cmd), 0);
}

static void write_at(const char *path, uint64_t off, uint8_t fill, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    cr_assert(fd >= 0);
    uint8_t *buf = malloc(len);
    memset(buf, fill, len);
    cr_assert_eq(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
    free(buf);
    close(fd);
}

static void sparse_raw(const char *path, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0);
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

TestSuite(raw, .init = make_tmpdir, .fini = remove_tmpdir);

Test(raw, sparse_file_maps_holes_and_data)
{
    char path[128], err[IMG_ERRMSG_MAX];
    snprintf(path, sizeof(path), "%s/disk.img", tmpdir);
    sparse_raw(path, 64 << 20);
    write_at(path, 16 << 20, 0x11, 1 << 20);

    struct img *img;
    struct img_open_opts o = { .format = "raw" };
    cr_assert_eq(img_open(path, &o, &img, err, sizeof(err)), 0, "%s", err);
    cr_expect_eq(img->size, 64ull << 20);

    struct img_extent e;
    cr_assert_eq(img_map(img, 0, img->size, &e), 0);
    cr_expect(e.kind == IMG_ZERO && e.len == 16ull << 20, "hole first, got %d+%llu", e.kind,
              (unsigned long long)e.len);
    cr_assert_eq(img_map(img, 16 << 20, img->size - (16 << 20), &e), 0);
    cr_expect(e.kind == IMG_DATA && e.fd == img->fd && e.host_off == 16ull << 20);
    cr_expect(e.len >= 1 << 20 && e.len < 8 << 20, "data run of about 1 MiB, got %llu",
              (unsigned long long)e.len);

    uint64_t bytes;
    cr_assert_eq(img_data_bytes(img, &bytes), 0);
    cr_expect(bytes >= 1 << 20 && bytes < 8 << 20);

    uint8_t buf[4096];
    cr_assert_eq(img_read(img, buf, sizeof(buf), (16 << 20) + 100), 0);
    for (size_t i = 0; i < sizeof(buf); i++)
        cr_assert_eq(buf[i], 0x11);
    img_close(img);
}

Test(raw, probe_falls_back_to_raw)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/text.txt", tmpdir);
    write_at(path, 0, 'x', 100);
    int fd = open(path, O_RDONLY);
    const struct img_format *f = img_probe(fd, path);
    close(fd);
    cr_assert_not_null(f);
    cr_expect_str_eq(f->name, "raw");
}

Test(raw, unknown_format_is_a_clear_error)
{
    char path[128], err[IMG_ERRMSG_MAX];
    snprintf(path, sizeof(path), "%s/disk.img", tmpdir);
    sparse_raw(path, 1 << 20);
    struct img *img;
    struct img_open_opts o = { .format = "nosuchformat" };
    cr_expect_lt(img_open(path, &o, &img, err, sizeof(err)), 0);
    cr_expect_null(img);
    cr_expect(strstr(err, "disk.img") && strstr(err, "nosuchformat"), "got '%s'", err);
}

Test(raw, missing_file_names_the_file)
{
    char path[128], err[IMG_ERRMSG_MAX];
    snprintf(path, sizeof(path), "%s/absent.img", tmpdir);
    struct img *img;
    cr_expect_eq(img_open(path, NULL, &img, err, sizeof(err)), -ENOENT);
    cr_expect(strstr(err, "absent.img") != NULL, "got '%s'", err);
}

/* ---- QEMU lock bytes ---- */

Test(raw, readers_share_but_a_writer_is_refused)
{
    char path[128], err[IMG_ERRMSG_MAX];
    snprintf(path, sizeof(path), "%s/disk.img", tmpdir);
    sparse_raw(path, 1 << 20);
    struct img *r1, *r2, *w;
    struct img_open_opts ro = { .format = "raw" };
    struct img_open_opts rw = { .format = "raw", .read_write = true };
    struct img_open_opts shared = { .format = "raw", .read_write = true, .force_share = true };

    cr_assert_eq(img_open(path, &ro, &r1, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(img_open(path, &ro, &r2, err, sizeof(err)), 0, "two readers: %s", err);
    cr_expect_eq(img_open(path, &rw, &w, err, sizeof(err)), -EAGAIN);
    cr_expect(strstr(err, "in use") && strstr(err, "disk.img"), "got '%s'", err);
    cr_expect_eq(img_open(path, &shared, &w, err, sizeof(err)), 0, "force_share: %s", err);
    img_close(w);
    img_close(r1);
    img_close(r2);
    cr_assert_eq(img_open(path, &rw, &w, err, sizeof(err)), 0, "free again: %s", err);
    cr_expect_eq(img_open(path, &ro, &r1, err, sizeof(err)), -EAGAIN, "writer excludes readers");
    img_close(w);
}

Test(raw, locks_interoperate_with_qemu_io)
{
    char path[128], err[IMG_ERRMSG_MAX], cmd[512];
    snprintf(path, sizeof(path), "%s/disk.img", tmpdir);
    sparse_raw(path, 1 << 20);
    struct img *r;
    struct img_open_opts ro = { .format = "raw" };
    cr_assert_eq(img_open(path, &ro, &r, err, sizeof(err)), 0, "%s", err);
    /* qemu-io opening read-write must see our reader lock and give up */
    snprintf(cmd, sizeof(cmd), "qemu-io -f raw -c 'write 0 512' '%s' >/dev/null 2>&1", path);
    cr_expect_neq(system(cmd), 0, "qemu-io wrote to an image imgfs holds");
    /* a qemu-io reader is fine */
    snprintf(cmd, sizeof(cmd), "qemu-io -r -f raw -c 'read 0 512' '%s' >/dev/null 2>&1", path);
    cr_expect_eq(system(cmd), 0, "qemu-io could not read beside us");
    img_close(r);
}

/* ---- files an image refers to ---- */

static struct img *img_in(const char *dir, const char *confine)
{
    struct img *img = calloc(1, sizeof(*img));
    img->path = strdup("ref.img");
    img->dir = strdup(dir);
    img->confine = strdup(confine);
    img->fd = -1;
    img->lock.fd = -1;
    img->force_share = true;
    return img;
}

static void img_in_free(struct img *img)
{
    for (size_t i = 0; i < img->n_companions; i++) {
        close(img->companion_fds[i]);
        free(img->companions[i]);
    }
    free(img->companions);
    free(img->companion_fds);
    free(img->companion_locks);
    free(img->path);
    free(img->dir);
    free(img->confine);
    free(img);
}

Test(raw, referenced_files_stay_inside_the_root)
{
    char real_root[PATH_MAX];
    cr_assert_not_null(realpath(tmpdir, real_root));
    cr_assert_lt(strlen(real_root), 100);
    char sub[128], outside[128], link[160];
    snprintf(sub, sizeof(sub), "%s/root", real_root);
    cr_assert_eq(mkdir(sub, 0755), 0);
    snprintf(outside, sizeof(outside), "%s/secret.img", real_root);
    write_at(outside, 0, 1, 10);
    char inside[160];
    snprintf(inside, sizeof(inside), "%s/data.bin", sub);
    write_at(inside, 0, 1, 10);
    snprintf(link, sizeof(link), "%s/link.img", sub);
    cr_assert_eq(symlink(outside, link), 0);

    struct img *img = img_in(sub, sub);
    int fd = img_open_referenced(img, "data.bin", "data file", true, NULL);
    cr_expect_geq(fd, 0, "%s", img->errmsg);
    cr_expect_eq(img->n_companions, 1);
    cr_expect_str_eq(img->companions[0], inside);

    cr_expect_eq(img_open_referenced(img, "../secret.img", "backing file", false, NULL), -EPERM);
    cr_expect(strstr(img->errmsg, "ref.img: backing file '../secret.img' lies outside"),
              "got '%s'", img->errmsg);
    cr_expect_eq(img_open_referenced(img, outside, "backing file", false, NULL), -EPERM,
                 "absolute path outside");
    cr_expect_eq(img_open_referenced(img, "link.img", "backing file", false, NULL), -EPERM,
                 "symlink leading outside");
    cr_expect_eq(img_open_referenced(img, "json:{\"file.filename\":\"/etc/passwd\"}",
                                     "backing file", false, NULL), -EPERM);
    cr_expect_eq(img_open_referenced(img, "nbd://localhost/x", "backing file", false, NULL),
                 -EPERM);
    cr_expect_eq(img_open_referenced(img, "absent.img", "backing file", false, NULL), -ENOENT);

    img->allow_outside = true;
    int fd2 = img_open_referenced(img, "../secret.img", "backing file", false, NULL);
    cr_expect_geq(fd2, 0, "allowed by the user: %s", img->errmsg);
    if (fd2 >= 0)
        close(fd2);
    img_in_free(img);
}
