/* formats/qcow2 write side: create, write (copy-on-write, refcount growth),
 * compressed clusters, zeros, backing file, resize, check, and a crash
 * test.  qemu-img is the judge: `qemu-img check` must find no corruption
 * and `qemu-img convert -O raw` must give the bytes an in-memory model of
 * the disk holds. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/bytes.h"
#include "core/format.h"
#include "core/img.h"
#include "formats/qcow2/qcow2.h"

#define SCRATCH_PREFIX "imgfs-qcow2w"
#include "scratch.h"

/* ---- helpers ---- */

TestSuite(qcow2_write, .init = scratch_make, .fini = scratch_remove);

static const struct img_format *qcow2(void)
{
    const struct img_format *f = img_format_by_name("qcow2");
    cr_assert_not_null(f);
    return f;
}

/* Create `name` with our driver; opts is "k=v,k=v" or "". */
static int try_create(const char *name, uint64_t size, const char *opts, const char *backing,
                      const char *backing_fmt, char *err, size_t errlen)
{
    char buf[512];
    struct img_kv kv[16];
    size_t n = 0;
    snprintf(buf, sizeof(buf), "%s", opts);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n < 16;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        cr_assert_not_null(eq);
        *eq = 0;
        kv[n++] = (struct img_kv){ tok, eq + 1 };
    }
    struct img_create_opts o = { .size = size, .backing_file = backing,
                                 .backing_fmt = backing_fmt, .opts = kv, .n_opts = n };
    return qcow2()->create(in_dir(name), &o, err, errlen);
}

static void create(const char *name, uint64_t size, const char *opts)
{
    char err[512] = "";
    int r = try_create(name, size, opts, NULL, NULL, err, sizeof(err));
    cr_assert_eq(r, 0, "create %s (%s): %s", name, opts, err);
}

/* The disk as qemu reads it must equal `want`. */
static void qemu_reads(const char *name, const uint8_t *want, size_t len)
{
    sh("qemu-img convert -O raw '%s' out.raw", name);
    size_t got_len;
    uint8_t *got = slurp(in_dir("out.raw"), &got_len);
    cr_assert_eq(got_len, len);
    size_t i = 0;
    while (i < len && got[i] == want[i])
        i++;
    cr_assert_eq(i, len, "%s differs from the model at byte 0x%zx", name, i);
    free(got);
}

/* Bytes that change with the offset and a seed, so misplaced data shows. */
static void fill(uint8_t *p, size_t len, uint64_t off, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        uint64_t x = (off + i) * 0x9e3779b97f4a7c15ull + seed;
        p[i] = (uint8_t)(x >> 56);
    }
}

static void write_both(struct img *img, uint8_t *model, uint64_t off, size_t len, unsigned seed)
{
    uint8_t *buf = malloc(len ? len : 1);
    fill(buf, len, off, seed);
    must(img, img->fmt->write(img, buf, len, off), "write");
    memcpy(model + off, buf, len);
    free(buf);
}

static void scattered_writes(struct img *img, uint8_t *model, uint64_t size, unsigned count,
                             size_t max_len, unsigned seed)
{
    srand(seed);
    for (unsigned k = 0; k < count; k++) {
        size_t len = 1 + (size_t)rand() % max_len;
        if (len > size)
            len = (size_t)size;
        uint64_t off = (uint64_t)rand() % (size - len + 1);
        write_both(img, model, off, len, seed + k);
    }
}

/* qemu-img info --output=json without the lines that name the file or
 * measure its disk usage. */
static char *info_json(const char *name)
{
    sh("qemu-img info --output=json '%s' | grep -v -e '\"filename\"' -e actual-size "
       "-e '\"dirty-flag\"' > info.json", name);
    size_t len;
    uint8_t *p = slurp(in_dir("info.json"), &len);
    char *s = malloc(len + 1);
    memcpy(s, p, len);
    s[len] = 0;
    free(p);
    return s;
}

/* ---- create ---- */

static void create_like_qemu(const char *opts, const char *size_str, uint64_t size)
{
    create("ours.qcow2", size, opts);
    sh("qemu-img create -f qcow2 %s%s twin.qcow2 %s", *opts ? "-o " : "", opts, size_str);
    qemu_check_clean("ours.qcow2");
    char *a = info_json("ours.qcow2");
    sh("cp twin.qcow2 ours.qcow2");   /* same name in the JSON */
    char *b = info_json("ours.qcow2");
    cr_assert_str_eq(a, b, "info differs for -o '%s'", opts);
    free(a);
    free(b);
}

Test(qcow2_write, create_matches_qemu)
{
    static const char *const options[] = {
        "", "compat=0.10", "compat=1.1", "cluster_size=512", "cluster_size=2M",
        "cluster_size=4k", "extended_l2=on,cluster_size=64k", "extended_l2=on,cluster_size=16k",
        "compression_type=zstd", "refcount_bits=1", "refcount_bits=8", "refcount_bits=64",
        "lazy_refcounts=on", "preallocation=metadata", "preallocation=metadata,cluster_size=4k",
        "preallocation=off",
    };
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++)
        create_like_qemu(options[i], "100M", 100ull << 20);
    create_like_qemu("", "0", 0);
    create_like_qemu("cluster_size=512", "3G", 3ull << 30);   /* L1 of many clusters */
}

Test(qcow2_write, create_layout_as_qemu)
{
    /* header, refcount table, refcount block, L1: the same first bytes. */
    create("ours.qcow2", 1ull << 30, "");
    sh("qemu-img create -f qcow2 twin.qcow2 1G");
    size_t a_len, b_len;
    uint8_t *a = slurp(in_dir("ours.qcow2"), &a_len);
    uint8_t *b = slurp(in_dir("twin.qcow2"), &b_len);
    cr_assert_eq(a_len, b_len);
    cr_assert(memcmp(a, b, a_len) == 0, "our new image differs from qemu-img's");
    free(a);
    free(b);
}

Test(qcow2_write, create_with_backing_records_it)
{
    sh("qemu-img create -f raw base.raw 10M");
    char err[512] = "";
    cr_assert_eq(try_create("top.qcow2", 10 << 20, "", "base.raw", "raw", err, sizeof(err)), 0,
                 "%s", err);
    sh("qemu-img create -f qcow2 -b base.raw -F raw twin.qcow2 10M");
    qemu_check_clean("top.qcow2");
    size_t a_len, b_len;
    uint8_t *a = slurp(in_dir("top.qcow2"), &a_len);
    uint8_t *b = slurp(in_dir("twin.qcow2"), &b_len);
    cr_assert_eq(a_len, b_len);
    cr_assert(memcmp(a, b, a_len) == 0, "backing header differs from qemu-img's");
    free(a);
    free(b);
}

Test(qcow2_write, create_refuses_bad_options)
{
    char err[512];
    cr_assert_eq(try_create("x.qcow2", 1 << 20, "foo=bar", NULL, NULL, err, sizeof(err)), -EINVAL);
    cr_assert_str_eq(err, "Invalid parameter 'foo'");
    cr_assert_lt(try_create("x.qcow2", 1 << 20, "cluster_size=1000", NULL, NULL, err,
                            sizeof(err)), 0);
    cr_assert_lt(try_create("x.qcow2", 1 << 20, "extended_l2=on,cluster_size=4k", NULL, NULL,
                            err, sizeof(err)), 0);
    cr_assert_lt(try_create("x.qcow2", 1 << 20, "compat=0.10,refcount_bits=8", NULL, NULL, err,
                            sizeof(err)), 0);
    cr_assert_lt(try_create("x.qcow2", 1 << 20, "data_file=d.raw", NULL, NULL, err,
                            sizeof(err)), 0);
    cr_assert_not_null(strstr(err, "data file"));
}

/* ---- writes ---- */

static void write_and_compare(const char *opts, uint64_t size, unsigned count, size_t max_len)
{
    create("w.qcow2", size, opts);
    uint8_t *model = calloc(1, size);
    struct img *img = scratch_open("w.qcow2", "qcow2", true);
    scattered_writes(img, model, size, count, max_len, 7);
    /* overwrite some of it again: in place now */
    scattered_writes(img, model, size, count / 2, max_len, 99);
    must(img, img->fmt->flush(img), "flush");
    /* our own reads see the model too */
    uint8_t *back = malloc(size);
    must(img, img_read(img, back, size, 0), "read");
    cr_assert(memcmp(back, model, size) == 0, "our reads differ from the model (%s)", opts);
    img_close(img);
    qemu_check_clean("w.qcow2");
    qemu_reads("w.qcow2", model, size);
    free(back);
    free(model);
}

Test(qcow2_write, scattered_unaligned_writes)
{
    write_and_compare("", 32 << 20, 300, 200000);
}

Test(qcow2_write, v2_and_extended_l2)
{
    write_and_compare("compat=0.10", 16 << 20, 200, 100000);
    write_and_compare("extended_l2=on", 16 << 20, 300, 70000);
    write_and_compare("refcount_bits=1,cluster_size=4k", 8 << 20, 200, 30000);
    write_and_compare("refcount_bits=64", 8 << 20, 100, 30000);
}

Test(qcow2_write, refcount_table_grows_with_512_byte_clusters)
{
    /* 512-byte clusters, 16-bit refcounts: one block counts 128 KiB and one
     * table cluster names 64 blocks (8 MiB): 12 MiB of data moves the table. */
    create("g.qcow2", 16 << 20, "cluster_size=512");
    uint8_t *model = calloc(1, 16 << 20);
    struct img *img = scratch_open("g.qcow2", "qcow2", true);
    write_both(img, model, 0, 12 << 20, 3);
    scattered_writes(img, model, 16 << 20, 200, 5000, 11);
    must(img, img->fmt->flush(img), "flush");
    cr_assert_gt(((struct qcow2 *)img->priv)->w->rt_clusters, 1u, "the table did not grow");
    img_close(img);
    qemu_check_clean("g.qcow2");
    qemu_reads("g.qcow2", model, 16 << 20);
    free(model);
}

Test(qcow2_write, two_megabyte_clusters)
{
    write_and_compare("cluster_size=2M", 64 << 20, 60, 3 << 20);
}

static void cow_over_backing(const char *top_opts)
{
    const uint64_t size = 8 << 20;
    uint8_t *model = malloc(size);
    fill(model, size, 0, 1234);
    int fd = open(in_dir("base.raw"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_eq(pwrite(fd, model, size, 0), (ssize_t)size);
    close(fd);
    sh("qemu-img convert -O qcow2 base.raw base.qcow2");
    char err[512] = "";
    cr_assert_eq(try_create("top.qcow2", size, top_opts, "base.qcow2", "qcow2", err,
                            sizeof(err)), 0, "%s", err);
    struct img *img = scratch_open("top.qcow2", "qcow2", true);
    scattered_writes(img, model, size, 150, 40000, 5);
    img_close(img);
    qemu_check_clean("top.qcow2");
    qemu_reads("top.qcow2", model, size);
    free(model);
}

Test(qcow2_write, copy_on_write_from_backing)
{
    cow_over_backing("");
    cow_over_backing("extended_l2=on");
    cow_over_backing("compat=0.10,cluster_size=4k");
}

Test(qcow2_write, over_compressed_and_zero_clusters)
{
    const uint64_t size = 4 << 20;
    uint8_t *model = calloc(1, size);
    for (uint64_t off = 0; off < size; off += 65536)
        memset(model + off, (int)(off >> 16) + 1, 65536);
    int fd = open(in_dir("src.raw"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_eq(pwrite(fd, model, size, 0), (ssize_t)size);
    close(fd);
    sh("qemu-img convert -c -O qcow2 src.raw c.qcow2");
    sh("qemu-io -f qcow2 -c 'write -z 1M 256k' -c 'write -z -u 2M 128k' c.qcow2");
    memset(model + (1 << 20), 0, 256 << 10);
    memset(model + (2 << 20), 0, 128 << 10);
    struct img *img = scratch_open("c.qcow2", "qcow2", true);
    scattered_writes(img, model, size, 100, 20000, 21);
    write_both(img, model, 3 << 20, 65536, 77);   /* a whole compressed cluster replaced */
    img_close(img);
    qemu_check_clean("c.qcow2");
    qemu_reads("c.qcow2", model, size);
    free(model);
}

/* ---- compressed writes ---- */

static void compressed_round_trip(const char *opts)
{
    const uint64_t size = (4 << 20) + 4096;   /* a short last cluster */
    create("z.qcow2", size, opts);
    uint8_t *model = calloc(1, size);
    for (uint64_t off = 0; off < size; off++)
        model[off] = (uint8_t)("compressible text "[off % 18] + (off >> 16) % 7);
    fill(model + (1 << 20), 65536, 1 << 20, 5);   /* does not shrink: stored plain */
    struct img *img = scratch_open("z.qcow2", "qcow2", true);
    uint64_t cs = img->cluster_size;
    for (uint64_t off = 0; off < size; off += cs) {
        size_t len = size - off < cs ? (size_t)(size - off) : cs;
        must(img, img->fmt->write_compressed(img, model + off, len, off), "write_compressed");
    }
    /* rewrite one compressed cluster partly: copy-on-write from the stream */
    write_both(img, model, (2 << 20) + 1000, 5000, 9);
    must(img, img->fmt->write_compressed(img, model, cs, 0), "recompress");
    img_close(img);
    qemu_check_clean("z.qcow2");
    qemu_reads("z.qcow2", model, size);
    sh("qemu-img check --output=json z.qcow2 | grep -q compressed-clusters");
    free(model);
}

Test(qcow2_write, compressed_zlib_and_zstd)
{
    compressed_round_trip("");
    compressed_round_trip("compression_type=zstd");
    compressed_round_trip("cluster_size=4k");
    compressed_round_trip("refcount_bits=1");
}

/* ---- zeros ---- */

static void zeroes_case(const char *opts, bool backing, bool may_unmap)
{
    const uint64_t size = 4 << 20;
    uint8_t *model = malloc(size);
    if (backing) {
        fill(model, size, 0, 42);
        int fd = open(in_dir("zb.raw"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        cr_assert_eq(pwrite(fd, model, size, 0), (ssize_t)size);
        close(fd);
    } else
        memset(model, 0, size);
    char err[512] = "";
    cr_assert_eq(try_create("zz.qcow2", size, opts, backing ? "zb.raw" : NULL,
                            backing ? "raw" : NULL, err, sizeof(err)), 0, "%s", err);
    struct img *img = scratch_open("zz.qcow2", "qcow2", true);
    write_both(img, model, 0, size / 2, 8);
    static const uint64_t ranges[][2] = {
        { 0, 65536 }, { 100000, 300000 }, { 1 << 20, 1 << 20 }, { 3 << 20, 5000 },
        { (3 << 20) + 65536 * 3, 65536 * 4 + 77 },
    };
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
        must(img, img->fmt->write_zeroes(img, ranges[i][0], ranges[i][1], may_unmap), "zeroes");
        memset(model + ranges[i][0], 0, ranges[i][1]);
    }
    write_both(img, model, 1000, 3000, 3);   /* into a zeroed cluster again */
    img_close(img);
    qemu_check_clean("zz.qcow2");
    qemu_reads("zz.qcow2", model, size);
    free(model);
}

Test(qcow2_write, write_zeroes)
{
    zeroes_case("", false, true);
    zeroes_case("", false, false);
    zeroes_case("", true, true);
    zeroes_case("", true, false);
    zeroes_case("compat=0.10", false, true);
    zeroes_case("compat=0.10", true, true);
    zeroes_case("extended_l2=on", true, false);
    zeroes_case("extended_l2=on", false, true);
}

/* ---- backing, resize ---- */

Test(qcow2_write, set_backing_shows_in_qemu_info)
{
    sh("qemu-img create -f qcow2 b1.qcow2 10M && qemu-img create -f qcow2 b2.qcow2 10M");
    char err[512] = "";
    cr_assert_eq(try_create("t.qcow2", 10 << 20, "", "b1.qcow2", "qcow2", err, sizeof(err)), 0);
    struct img *img = scratch_open("t.qcow2", "qcow2", true);
    must(img, img->fmt->set_backing(img, "b2.qcow2", "qcow2"), "set_backing");
    img_close(img);
    sh("qemu-img info --output=json t.qcow2 | grep -q '\"backing-filename\": \"b2.qcow2\"'");
    sh("qemu-img info --output=json t.qcow2 | grep -q '\"backing-filename-format\": \"qcow2\"'");
    qemu_check_clean("t.qcow2");
    img = scratch_open("t.qcow2", "qcow2", true);
    must(img, img->fmt->set_backing(img, NULL, NULL), "drop backing");
    img_close(img);
    cr_assert_neq(sh_status("qemu-img info t.qcow2 | grep -q backing"), 0);
    qemu_check_clean("t.qcow2");
}

Test(qcow2_write, resize_grows_the_l1_table)
{
    create("r.qcow2", 1 << 20, "cluster_size=512");
    uint8_t *model = calloc(1, 64 << 20);
    struct img *img = scratch_open("r.qcow2", "qcow2", true);
    write_both(img, model, 1000, 100000, 1);
    /* 512-byte clusters: one L1 cluster covers 64 * 32 KiB = 2 MiB */
    must(img, img->fmt->resize(img, 64 << 20, false), "resize");
    write_both(img, model, (64 << 20) - 70000, 70000, 2);
    cr_assert_lt(img->fmt->resize(img, 1 << 20, false), 0, "shrinking needs shrink=true");
    img_close(img);
    qemu_check_clean("r.qcow2");
    qemu_reads("r.qcow2", model, 64 << 20);
    img = scratch_open("r.qcow2", "qcow2", true);
    must(img, img->fmt->resize(img, 32 << 20, true), "shrink");
    img_close(img);
    qemu_check_clean("r.qcow2");
    qemu_reads("r.qcow2", model, 32 << 20);
    free(model);
}

/* ---- check ---- */

struct lines {
    char text[4096];
};

static void collect(void *ctx, const char *line)
{
    struct lines *l = ctx;
    size_t used = strlen(l->text);
    snprintf(l->text + used, sizeof(l->text) - used, "%s\n", line);
}

static struct img_check run_check(const char *name, unsigned repair, struct lines *l)
{
    struct img_open_opts o = { .format = "qcow2", .read_write = repair != 0 };
    struct img *img;
    char err[IMG_ERRMSG_MAX] = "";
    cr_assert_eq(img_open(in_dir(name), &o, &img, err, sizeof(err)), 0, "%s", err);
    struct img_check res = { .report = collect, .report_ctx = l };
    must(img, img->fmt->check(img, &res, repair), "check");
    img_close(img);
    return res;
}

static uint64_t qemu_check_num(const char *name, const char *key)
{
    sh("qemu-img check --output=json '%s' > check.json; true", name);
    size_t len;
    uint8_t *p = slurp(in_dir("check.json"), &len);
    char *s = malloc(len + 1);
    memcpy(s, p, len);
    s[len] = 0;
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    char *at = strstr(s, pat);
    uint64_t v = at ? strtoull(at + strlen(pat), NULL, 10) : 0;
    free(s);
    free(p);
    return v;
}

static void check_agrees_with_qemu(const char *name)
{
    struct lines l = { "" };
    struct img_check res = run_check(name, 0, &l);
    cr_assert_eq(res.corruptions, 0, "%s", l.text);
    cr_assert_eq(res.leaks, 0, "%s", l.text);
    static const char *const keys[] = { "image-end-offset", "total-clusters",
                                        "allocated-clusters", "fragmented-clusters",
                                        "compressed-clusters" };
    uint64_t ours[] = { res.image_end_offset, res.total_clusters, res.allocated_clusters,
                        res.fragmented_clusters, res.compressed_clusters };
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(ours[i], qemu_check_num(name, keys[i]), "%s: %s %llu, qemu says %llu",
                     name, keys[i], (unsigned long long)ours[i],
                     (unsigned long long)qemu_check_num(name, keys[i]));
}

Test(qcow2_write, check_numbers_match_qemu)
{
    sh("qemu-img create -f qcow2 e.qcow2 100M");
    check_agrees_with_qemu("e.qcow2");
    sh("qemu-io -f qcow2 -c 'write 0 1M' -c 'write 5M 100k' -c 'write -c 10M 64k' "
       "-c 'write -c 11M 64k' -c 'write -z 20M 64k' -c 'write 3M 64k' e.qcow2");
    check_agrees_with_qemu("e.qcow2");
    sh("qemu-img create -f qcow2 -o preallocation=metadata,cluster_size=4k p.qcow2 20M");
    check_agrees_with_qemu("p.qcow2");
    sh("head -c 3000000 /dev/urandom > rnd.raw && qemu-img convert -c -O qcow2 rnd.raw cz.qcow2");
    check_agrees_with_qemu("cz.qcow2");
}

/* The refcount block of a fresh image is at cluster 2; entry i is cluster i. */
static void poke_refcount(const char *name, uint64_t cluster_size, uint64_t cluster, uint16_t v)
{
    uint8_t b[2];
    put_be16(b, v);
    int fd = open(in_dir(name), O_WRONLY);
    cr_assert_eq(pwrite(fd, b, 2, (off_t)(2 * cluster_size + 2 * cluster)), 2);
    close(fd);
}

Test(qcow2_write, check_finds_and_repairs_a_leak)
{
    /* clusters: 0 header, 1 table, 2 block, 3 L1, 4 L2, 5-7 data; the
     * discard frees cluster 6 inside the file */
    sh("qemu-img create -f qcow2 l.qcow2 10M && "
       "qemu-io -f qcow2 -c 'write 0 192k' -c 'discard 64k 64k' l.qcow2");
    struct lines l = { "" };
    struct img_check res = run_check("l.qcow2", 0, &l);
    cr_assert_eq(res.leaks + res.corruptions, 0, "%s", l.text);
    poke_refcount("l.qcow2", 65536, 6, 1);   /* nothing references cluster 6 */
    cr_assert_eq(sh_status("qemu-img check l.qcow2"), 3, "qemu sees the leak");
    memset(&l, 0, sizeof(l));
    res = run_check("l.qcow2", 0, &l);
    cr_assert_eq(res.leaks, 1);
    cr_assert_eq(res.corruptions, 0);
    cr_assert_not_null(strstr(l.text, "Leaked cluster 6 refcount=1 reference=0"), "%s", l.text);
    memset(&l, 0, sizeof(l));
    res = run_check("l.qcow2", IMG_CHECK_REPAIR_LEAKS, &l);
    cr_assert_eq(res.leaks_fixed, 1);
    qemu_check_clean("l.qcow2");
}

Test(qcow2_write, check_finds_a_refcount_too_low)
{
    sh("qemu-img create -f qcow2 c.qcow2 10M && qemu-io -f qcow2 -c 'write 0 128k' c.qcow2");
    /* clusters: 0 header, 1 table, 2 block, 3 L1, 4 L2, 5-6 data */
    poke_refcount("c.qcow2", 65536, 5, 0);
    struct lines l = { "" };
    struct img_check res = run_check("c.qcow2", 0, &l);
    cr_assert_geq(res.corruptions, 1);
    cr_assert_not_null(strstr(l.text, "ERROR cluster 5 refcount=0 reference=1"), "%s", l.text);
    memset(&l, 0, sizeof(l));
    res = run_check("c.qcow2", IMG_CHECK_REPAIR_LEAKS | IMG_CHECK_REPAIR_ERRORS, &l);
    cr_assert_geq(res.corruptions_fixed, 1, "%s", l.text);
    qemu_check_clean("c.qcow2");
}

/* ---- refusals ---- */

Test(qcow2_write, refuses_images_it_cannot_write_safely)
{
    sh("qemu-img create -f qcow2 s.qcow2 10M && qemu-img snapshot -c snap s.qcow2");
    struct img_open_opts o = { .format = "qcow2", .read_write = true };
    struct img *img = NULL;
    char err[IMG_ERRMSG_MAX] = "";
    cr_assert_eq(img_open(in_dir("s.qcow2"), &o, &img, err, sizeof(err)), -ENOTSUP);
    cr_assert_not_null(strstr(err, "snapshots"), "%s", err);
    /* read-only check still counts the snapshot's tables */
    struct lines l = { "" };
    struct img_check res = run_check("s.qcow2", 0, &l);
    cr_assert_eq(res.leaks + res.corruptions, 0, "%s", l.text);
}

/* ---- crash safety ---- */

/* The child writes forever; after each flush it records in `flushed` how
 * many rounds are durable.  Round k writes seed k at the offsets of
 * rounds' pseudo-random sequence. */
struct round {
    uint64_t off;
    size_t len;
};

static struct round round_at(unsigned k, uint64_t size)
{
    uint64_t x = (k + 1) * 0x9e3779b97f4a7c15ull;
    struct round r = { .len = 1 + (size_t)((x >> 20) % 150000) };
    r.off = (x >> 8) % (size - r.len);
    return r;
}

static void crash_child(const char *name, uint64_t size, unsigned compressed_every)
{
    struct img *img = scratch_open(name, "qcow2", true);
    uint8_t *buf = malloc(200000);
    int mark = open(in_dir("flushed"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (unsigned k = 0;; k++) {
        struct round r = round_at(k, size);
        int e = 0;
        if (compressed_every && k % compressed_every == 0) {
            uint64_t c = (r.off / 65536) * 65536;
            fill(buf, 65536, c, k);
            e = img->fmt->write_compressed(img, buf, 65536, c);
        } else {
            fill(buf, r.len, r.off, k);
            e = img->fmt->write(img, buf, r.len, r.off);
        }
        if (e == 0 && k % 7 == 6)
            e = img->fmt->flush(img);
        if (e < 0)
            _exit(2);
        if (k % 7 == 6) {
            char line[32];
            int n = snprintf(line, sizeof(line), "%10u\n", k + 1);
            if (pwrite(mark, line, (size_t)n, 0) != n || fdatasync(mark) < 0)
                _exit(3);
        }
    }
}

/* Rebuild the model of the first `rounds` rounds. */
static void replay(uint8_t *model, uint64_t size, unsigned rounds, unsigned compressed_every)
{
    uint8_t *buf = malloc(200000);
    for (unsigned k = 0; k < rounds; k++) {
        struct round r = round_at(k, size);
        if (compressed_every && k % compressed_every == 0) {
            uint64_t c = (r.off / 65536) * 65536;
            fill(buf, 65536, c, k);
            memcpy(model + c, buf, 65536);
        } else {
            fill(buf, r.len, r.off, k);
            memcpy(model + r.off, buf, r.len);
        }
    }
    free(buf);
}

static unsigned read_flushed(void)
{
    size_t len;
    uint8_t *p = slurp(in_dir("flushed"), &len);
    char s[32] = "";
    memcpy(s, p, len < sizeof(s) - 1 ? len : sizeof(s) - 1);
    free(p);
    return (unsigned)strtoul(s, NULL, 10);
}

/* Did everything up to the last flush survive?  Later rounds may or may not
 * have: each byte must come from some round >= flushed, or the model. */
static void crash_once(const char *opts, unsigned compressed_every, unsigned delay_ms)
{
    const uint64_t size = 16 << 20;
    create("crash.qcow2", size, opts);
    close(open(in_dir("flushed"), O_WRONLY | O_CREAT | O_TRUNC, 0644));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        crash_child("crash.qcow2", size, compressed_every);
    struct timespec ts = { delay_ms / 1000, (long)(delay_ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status), "the writer stopped on its own (status %d)", status);
    /* no corruption (exit 2); leaks (exit 3) are allowed */
    int rc = sh_status("qemu-img check crash.qcow2");
    if (rc != 0 && rc != 3)
        sh_status("qemu-img check crash.qcow2 >&2");
    cr_assert(rc == 0 || rc == 3, "qemu-img check exits %d after a kill at %u ms", rc, delay_ms);
    unsigned flushed = read_flushed();
    /* check the rounds before the last flush that no later round overwrote */
    uint8_t *model = calloc(1, size), *after = calloc(1, size);
    replay(model, size, flushed, compressed_every);
    replay(after, size, flushed + 64, compressed_every);   /* at most this far */
    sh("qemu-img convert -O raw crash.qcow2 out.raw");
    size_t got_len;
    uint8_t *got = slurp(in_dir("out.raw"), &got_len);
    cr_assert_eq(got_len, size);
    size_t bad = 0;
    for (size_t i = 0; i < size; i++)
        if (got[i] != model[i] && model[i] == after[i] && !bad)
            bad = i + 1;
    /* A byte may differ from the model only where a later round wrote it. */
    cr_assert_eq(bad, 0, "byte 0x%zx lost after the kill at %u ms (flushed %u rounds)",
                 bad - 1, delay_ms, flushed);
    free(got);
    free(model);
    free(after);
}

Test(qcow2_write, sigkill_leaves_a_consistent_image)
{
    srand((unsigned)time(NULL));
    for (int i = 0; i < 4; i++)
        crash_once("", 0, 50 + (unsigned)(rand() % 400));
    crash_once("cluster_size=512", 0, 50 + (unsigned)(rand() % 400));
    crash_once("", 5, 50 + (unsigned)(rand() % 400));
}

/* ---- dirty bit (lazy refcounts) ---- */

Test(qcow2_write, dirty_image_needs_repair_before_writing)
{
    sh("qemu-img create -f qcow2 -o lazy_refcounts=on d.qcow2 10M && "
       "qemu-io -f qcow2 -c 'write 0 64k' d.qcow2");
    int fd = open(in_dir("d.qcow2"), O_RDWR);
    uint8_t b = 1;   /* incompatible feature bit 0: dirty */
    cr_assert_eq(pwrite(fd, &b, 1, 79), 1);
    close(fd);
    struct img *img = scratch_open("d.qcow2", "qcow2", true);
    uint8_t data[512] = { 1 };
    cr_assert_eq(img->fmt->write(img, data, sizeof(data), 0), -EROFS);
    cr_assert_not_null(strstr(img->errmsg, "dirty"), "%s", img->errmsg);
    img_close(img);
    struct lines l = { "" };
    run_check("d.qcow2", IMG_CHECK_REPAIR_LEAKS | IMG_CHECK_REPAIR_ERRORS, &l);
    img = scratch_open("d.qcow2", "qcow2", true);
    must(img, img->fmt->write(img, data, sizeof(data), 0), "write after repair");
    img_close(img);
    qemu_check_clean("d.qcow2");
    sh("qemu-img info --output=json d.qcow2 | grep -q '\"dirty-flag\": false'");
}
