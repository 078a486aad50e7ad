/* formats/qcow2 discard: whole clusters (whole subclusters with extended
 * L2) become unallocated, so the range reads from the backing file again
 * (zeros without one), and the host space they held is freed.  qemu-img is
 * the judge: `qemu-img check` finds neither corruption nor leak (the
 * references were dropped, exactly once), `qemu-img map` shows the range
 * unallocated in the image, and `qemu-img convert -O raw` gives the bytes
 * of an in-memory model.  A SIGKILL at any moment leaks at worst. */
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

#define SCRATCH_PREFIX "imgfs-qcow2d"
#include "scratch.h"

#define KIB 1024ull
#define MIB (1024ull * 1024)

/* ---- helpers ---- */

TestSuite(qcow2_discard, .init = scratch_make, .fini = scratch_remove);

static void spill(const char *name, const uint8_t *buf, size_t len)
{
    int fd = open(in_dir(name), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, buf, len, 0), (ssize_t)len);
    close(fd);
}

static const struct img_format *qcow2(void)
{
    const struct img_format *f = img_format_by_name("qcow2");
    cr_assert_not_null(f);
    return f;
}

/* Create `name` with our driver over an optional raw backing file; opts is
 * "k=v,k=v" or "". */
static void create(const char *name, uint64_t size, const char *opts, const char *backing)
{
    char buf[512], err[512] = "";
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
                                 .backing_fmt = backing ? "raw" : NULL, .opts = kv,
                                 .n_opts = n };
    cr_assert_eq(qcow2()->create(in_dir(name), &o, err, sizeof(err)), 0, "create %s (%s): %s",
                 name, opts, err);
}

/* Our own check agrees: no leak, no corruption. */
static void our_check_clean(const char *name)
{
    struct img *img = scratch_open(name, "qcow2", false);
    struct img_check res = { 0 };
    must(img, img->fmt->check(img, &res, 0), "check");
    img_close(img);
    cr_assert_eq(res.corruptions + res.leaks + res.check_errors, 0,
                 "our check of %s: %llu corruptions, %llu leaks", name,
                 (unsigned long long)res.corruptions, (unsigned long long)res.leaks);
}

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

/* Does qemu-img map see anything of [off, off+len) allocated in the image
 * itself (depth 0 and present), as opposed to the backing file or nothing? */
static bool qemu_allocated(const char *name, uint64_t off, uint64_t len)
{
    int rc = sh_status("qemu-img map --output=json '%s' | jq -e '[.[] | select(.depth == 0 "
                       "and .present and .start < %llu and .start + .length > %llu)] | "
                       "length == 0'", name, (unsigned long long)(off + len),
                       (unsigned long long)off);
    cr_assert(rc == 0 || rc == 1, "qemu-img map | jq exits %d", rc);
    return rc == 1;
}

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

/* The whole units (cluster, or subcluster with extended L2) inside
 * [off, off+len): [*a, *b), empty when *a >= *b. */
static void whole_units(uint64_t off, uint64_t len, uint64_t unit, uint64_t size, uint64_t *a,
                        uint64_t *b)
{
    *a = (off + unit - 1) / unit * unit;
    *b = off + len == size ? size : (off + len) / unit * unit;
}

/* Discard through the driver; the model then reads `under` (the backing
 * file's bytes, or zeros) where whole units were discarded. */
static void discard_both(struct img *img, uint8_t *model, const uint8_t *under, uint64_t off,
                         uint64_t len, uint64_t unit)
{
    must(img, img->fmt->discard(img, off, len), "discard");
    uint64_t a, b;
    whole_units(off, len, unit, img->size, &a, &b);
    if (a < b)
        memcpy(model + a, under + a, b - a);
}

/* The raw L2 entry (and bitmap) of guest offset `off`, read from the file
 * itself, so that tests see what is on disk and not what a driver says. */
static void l2_entry(const char *name, uint64_t off, uint64_t *e, uint64_t *bm)
{
    size_t len;
    uint8_t *f = slurp(in_dir(name), &len);
    unsigned cb = get_be32(f + 20);
    bool ext = get_be32(f + 4) >= 3 && (get_be64(f + 72) & QCOW2_INCOMPAT_EXTL2);
    unsigned eb = ext ? 16 : 8, l2_bits = cb - (ext ? 4 : 3);
    uint64_t l2 = get_be64(f + get_be64(f + 40) + 8 * (off >> (cb + l2_bits))) &
                  QCOW2_OFFSET_MASK;
    uint64_t at = l2 + ((off >> cb) & ((1ull << l2_bits) - 1)) * eb;
    *e = l2 ? get_be64(f + at) : 0;
    *bm = l2 && ext ? get_be64(f + at + 8) : 0;
    free(f);
}

/* A raw backing file of `size` pattern bytes, returned as the model. */
static uint8_t *make_backing(const char *name, uint64_t size, unsigned seed)
{
    uint8_t *b = malloc(size);
    fill(b, size, 0, seed);
    spill(name, b, size);
    return b;
}

static void judge(const char *name, const uint8_t *model, uint64_t size)
{
    qemu_check_clean(name);
    our_check_clean(name);
    qemu_reads(name, model, size);
}

/* ---- plain clusters ---- */

static void plain_case(const char *opts, uint64_t cluster, bool backing)
{
    const uint64_t size = 4 * MIB;
    uint8_t *under = backing ? make_backing("b.raw", size, 42) : calloc(1, size);
    uint8_t *model = malloc(size);
    memcpy(model, under, size);
    create("p.qcow2", size, opts, backing ? "b.raw" : NULL);
    struct img *img = scratch_open("p.qcow2", "qcow2", true);
    write_both(img, model, 0, size, 7);
    static const uint64_t ranges[][2] = {
        { 0, 64 * KIB }, { 100000, 300000 }, { MIB, MIB }, { 3 * MIB + 5, 1000 },
        { 4 * MIB - 200000, 200000 },
    };
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++)
        discard_both(img, model, under, ranges[i][0], ranges[i][1], cluster);
    img_close(img);
    judge("p.qcow2", model, size);
    cr_assert(!qemu_allocated("p.qcow2", MIB, MIB), "[1M, 2M) is still allocated (%s)", opts);
    cr_assert(!qemu_allocated("p.qcow2", 0, 64 * KIB));
    /* the partial clusters at the edges keep their data */
    cr_assert(qemu_allocated("p.qcow2", 99999, 1), "a partial cluster went (%s)", opts);
    cr_assert(qemu_allocated("p.qcow2", 3 * MIB + 5, 1000));
    free(model);
    free(under);
}

Test(qcow2_discard, plain_clusters)
{
    plain_case("", 64 * KIB, false);
    plain_case("", 64 * KIB, true);
    plain_case("cluster_size=4k", 4 * KIB, true);
    plain_case("refcount_bits=1,cluster_size=512", 512, false);
    plain_case("compat=0.10", 64 * KIB, true);
}

/* The range is left as it was when it holds no whole cluster. */
Test(qcow2_discard, partial_cluster_is_left_alone)
{
    create("e.qcow2", MIB, "", NULL);
    uint8_t *model = calloc(1, MIB), *under = calloc(1, MIB);
    struct img *img = scratch_open("e.qcow2", "qcow2", true);
    write_both(img, model, 0, MIB, 3);
    img_close(img);
    uint64_t e0, bm0, e1, bm1;
    l2_entry("e.qcow2", 64 * KIB, &e0, &bm0);
    img = scratch_open("e.qcow2", "qcow2", true);
    discard_both(img, model, under, 64 * KIB + 1, 64 * KIB + 100, 64 * KIB);  /* 2 partial */
    img_close(img);
    l2_entry("e.qcow2", 64 * KIB, &e1, &bm1);
    cr_assert_eq(e0, e1);
    cr_assert_neq(e1, 0);
    judge("e.qcow2", model, MIB);
    free(model);
    free(under);
}

/* ---- compressed clusters ---- */

static void compressed_case(const char *opts)
{
    const uint64_t size = 2 * MIB;
    uint8_t *model = malloc(size), *under = calloc(1, size);
    for (uint64_t off = 0; off < size; off++)
        model[off] = (uint8_t)("discard me, compressed "[off % 23] + (off >> 16) % 5);
    spill("src.raw", model, size);
    /* small streams: several share a host cluster (refcount > 1) */
    sh("qemu-img convert -c -O qcow2 %s%s src.raw c.qcow2", *opts ? "-o " : "", opts);
    struct img *img = scratch_open("c.qcow2", "qcow2", true);
    uint64_t cs = img->cluster_size;
    for (uint64_t off = 0; off < size / 2; off += 2 * cs)
        discard_both(img, model, under, off, cs, cs);
    discard_both(img, model, under, size / 2 + 100, size / 4, cs);
    discard_both(img, model, under, size - 3 * cs + 1, cs, cs);   /* partial: kept */
    img_close(img);
    judge("c.qcow2", model, size);
    cr_assert(!qemu_allocated("c.qcow2", 0, cs));
    cr_assert(qemu_allocated("c.qcow2", cs, cs), "a compressed cluster went");
    /* then all of it: every shared host cluster goes */
    img = scratch_open("c.qcow2", "qcow2", true);
    discard_both(img, model, under, 0, size, cs);
    img_close(img);
    judge("c.qcow2", model, size);
    cr_assert(!qemu_allocated("c.qcow2", 0, size));
    sh("qemu-img check --output=json c.qcow2 | jq -e '.\"compressed-clusters\" // 0 | . == 0'");
    free(model);
    free(under);
}

Test(qcow2_discard, compressed_clusters)
{
    compressed_case("");
    compressed_case("cluster_size=4k");
    compressed_case("compression_type=zstd");
    compressed_case("extended_l2=on");
}

/* ---- zero clusters ---- */

/* Zero clusters shadow the backing file; discarded, it shows again. */
static void zero_case(const char *opts)
{
    const uint64_t size = 4 * MIB;
    uint8_t *under = make_backing("zb.raw", size, 5), *model = malloc(size);
    memcpy(model, under, size);
    sh("qemu-img create -q -f qcow2 -b zb.raw -F raw %s%s z.qcow2 4M", *opts ? "-o " : "",
       opts);
    sh("qemu-io -f qcow2 -c 'write -z 0 1M' -c 'write -z -u 1M 1M' -c 'write -P 0x5a 2M 1M' "
       "-c 'write -z 2M 512k' z.qcow2");
    memset(model, 0, 2 * MIB + 512 * KIB);
    memset(model + 2 * MIB + 512 * KIB, 0x5a, 512 * KIB);
    struct img *img = scratch_open("z.qcow2", "qcow2", true);
    discard_both(img, model, under, 256 * KIB, 512 * KIB, 64 * KIB);
    discard_both(img, model, under, MIB, MIB + 256 * KIB, 64 * KIB);
    img_close(img);
    judge("z.qcow2", model, size);
    cr_assert(!qemu_allocated("z.qcow2", 256 * KIB, 512 * KIB));
    cr_assert(!qemu_allocated("z.qcow2", MIB, MIB + 256 * KIB));
    cr_assert(qemu_allocated("z.qcow2", 0, 256 * KIB), "a zero cluster outside went");
    free(model);
    free(under);
}

Test(qcow2_discard, zero_clusters_read_the_backing_file_again)
{
    zero_case("");
    zero_case("extended_l2=on");
}

/* ---- extended L2: subclusters ---- */

Test(qcow2_discard, extended_l2_subclusters)
{
    const uint64_t size = 2 * MIB, sc = 2 * KIB;   /* 64k clusters, 32 subclusters */
    uint8_t *under = make_backing("xb.raw", size, 9), *model = malloc(size);
    memcpy(model, under, size);
    create("x.qcow2", size, "extended_l2=on", "xb.raw");
    struct img *img = scratch_open("x.qcow2", "qcow2", true);
    write_both(img, model, 0, 512 * KIB, 1);
    write_both(img, model, 512 * KIB, 8 * KIB, 2);   /* subclusters 0..3 of cluster 8 */
    must(img, img->fmt->write_zeroes(img, 600 * KIB, 64 * KIB, false), "zeroes");
    memset(model + 600 * KIB, 0, 64 * KIB);
    discard_both(img, model, under, 64 * KIB + sc, 2 * sc, sc);        /* two subclusters */
    discard_both(img, model, under, 128 * KIB + 100, 10000, sc);       /* partial edges */
    discard_both(img, model, under, 600 * KIB + 3 * sc, 4 * sc, sc);   /* zero subclusters */
    /* every allocated subcluster of cluster 8, in two steps: the cluster goes */
    discard_both(img, model, under, 512 * KIB, 4 * KIB, sc);
    discard_both(img, model, under, 516 * KIB, 4 * KIB, sc);
    img_close(img);
    judge("x.qcow2", model, size);
    uint64_t e, bm;
    l2_entry("x.qcow2", 512 * KIB, &e, &bm);
    cr_assert_eq(e, 0, "the emptied cluster is still referenced: 0x%llx", (unsigned long long)e);
    cr_assert_eq(bm, 0);
    l2_entry("x.qcow2", 64 * KIB, &e, &bm);
    cr_assert_neq(e, 0);
    cr_assert_eq(bm, 0xffffffffull & ~(3ull << 1), "bitmap 0x%llx", (unsigned long long)bm);
    cr_assert(!qemu_allocated("x.qcow2", 64 * KIB + sc, 2 * sc));
    cr_assert(qemu_allocated("x.qcow2", 64 * KIB, sc));
    cr_assert(!qemu_allocated("x.qcow2", 512 * KIB, 64 * KIB));
    free(model);
    free(under);
}

/* ---- the whole image ---- */

static void whole_case(const char *opts, bool backing)
{
    const uint64_t size = 6 * MIB + 4096;   /* a short last cluster */
    uint8_t *under = backing ? make_backing("wb.raw", size, 77) : calloc(1, size);
    uint8_t *model = malloc(size);
    memcpy(model, under, size);
    create("w.qcow2", size, opts, backing ? "wb.raw" : NULL);
    struct img *img = scratch_open("w.qcow2", "qcow2", true);
    srand(11);
    for (int k = 0; k < 60; k++) {
        size_t len = 1 + (size_t)rand() % 200000;
        write_both(img, model, (uint64_t)rand() % (size - len), len, (unsigned)k);
    }
    must(img, img->fmt->write_zeroes(img, MIB, MIB, !backing), "zeroes");
    memset(model + MIB, 0, MIB);
    must(img, img->fmt->write_compressed(img, model, 64 * KIB, 0), "compressed");
    must(img, img->fmt->flush(img), "flush");
    discard_both(img, model, under, 0, size, 64 * KIB);
    img_close(img);
    judge("w.qcow2", model, size);
    cr_assert(!qemu_allocated("w.qcow2", 0, size), "something stays allocated (%s)", opts);
    /* the freed clusters serve new writes */
    img = scratch_open("w.qcow2", "qcow2", true);
    write_both(img, model, 100, 300000, 99);
    img_close(img);
    judge("w.qcow2", model, size);
    free(model);
    free(under);
}

Test(qcow2_discard, whole_image)
{
    whole_case("", false);
    whole_case("", true);
    whole_case("extended_l2=on", true);
    whole_case("compat=0.10", true);
}

Test(qcow2_discard, refused_read_only_and_past_the_end)
{
    create("ro.qcow2", MIB, "", NULL);
    struct img *img = scratch_open("ro.qcow2", "qcow2", false);
    cr_assert_eq(img->fmt->discard(img, 0, MIB), -EROFS);
    img_close(img);
    img = scratch_open("ro.qcow2", "qcow2", true);
    cr_assert_eq(img->fmt->discard(img, 0, MIB + 1), -EINVAL);
    img_close(img);
}

/* ---- crash safety ---- */

/* Round k of the child: a write, or every third round a discard of up to
 * 1 MiB, at pseudo-random places; a flush every 7 rounds. */
struct round {
    bool discard;
    uint64_t off, len;
};

static struct round round_at(unsigned k, uint64_t size)
{
    uint64_t x = (k + 1) * 0x9e3779b97f4a7c15ull;
    struct round r = { .discard = k % 3 == 2 };
    r.len = 1 + (x >> 20) % (r.discard ? MIB : 150000);
    r.off = (x >> 8) % (size - r.len);
    return r;
}

static void crash_child(const char *name, uint64_t size)
{
    struct img *img = scratch_open(name, "qcow2", true);
    uint8_t *buf = malloc(150000);
    int mark = open(in_dir("flushed"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (unsigned k = 0;; k++) {
        struct round r = round_at(k, size);
        fill(buf, r.discard ? 0 : r.len, r.off, k);
        int e = r.discard ? img->fmt->discard(img, r.off, r.len)
                          : img->fmt->write(img, buf, r.len, r.off);
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

/* Apply round k to `state`; [*from, *to) is what it changed. */
static void apply_round(uint8_t *state, const uint8_t *under, uint64_t size, uint64_t unit,
                        unsigned k, uint64_t *from, uint64_t *to)
{
    struct round r = round_at(k, size);
    if (!r.discard) {
        fill(state + r.off, r.len, r.off, k);
        *from = r.off;
        *to = r.off + r.len;
        return;
    }
    whole_units(r.off, r.len, unit, size, from, to);
    if (*from < *to)
        memcpy(state + *from, under + *from, *to - *from);
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

/* Every byte must read as it did after some round from the last recorded
 * flush on: what was flushed is not lost, and a discarded cluster never
 * comes back with someone else's bytes. */
static void judge_crash(const uint8_t *got, const uint8_t *under, uint64_t size, uint64_t unit,
                        unsigned flushed, unsigned delay_ms)
{
    uint8_t *state = malloc(size), *ok = malloc(size);
    memcpy(state, under, size);
    for (unsigned k = 0; k < flushed; k++) {
        uint64_t a, b;
        apply_round(state, under, size, unit, k, &a, &b);
    }
    for (uint64_t i = 0; i < size; i++)
        ok[i] = got[i] == state[i];
    for (unsigned k = flushed; k < flushed + 64; k++) {
        uint64_t a, b;
        apply_round(state, under, size, unit, k, &a, &b);
        for (uint64_t i = a; i < b; i++)
            ok[i] |= got[i] == state[i];
    }
    uint64_t bad = 0;
    while (bad < size && ok[bad])
        bad++;
    cr_assert_eq(bad, size, "byte 0x%llx is wrong after the kill at %u ms (flushed %u rounds)",
                 (unsigned long long)bad, delay_ms, flushed);
    free(state);
    free(ok);
}

static void crash_once(const char *opts, uint64_t unit, unsigned delay_ms)
{
    const uint64_t size = 16 * MIB;
    uint8_t *under = make_backing("kb.raw", size, 31);
    create("k.qcow2", size, opts, "kb.raw");
    close(open(in_dir("flushed"), O_WRONLY | O_CREAT | O_TRUNC, 0644));
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        crash_child("k.qcow2", size);
    struct timespec ts = { delay_ms / 1000, (long)(delay_ms % 1000) * 1000000 };
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status), "the child stopped on its own (status %d)", status);
    int rc = sh_status("qemu-img check k.qcow2");   /* 0 clean, 3 leaks only */
    if (rc != 0 && rc != 3)
        sh_status("qemu-img check k.qcow2 >&2");
    cr_assert(rc == 0 || rc == 3, "qemu-img check exits %d after a kill at %u ms", rc, delay_ms);
    sh("qemu-img convert -O raw k.qcow2 out.raw");
    size_t got_len;
    uint8_t *got = slurp(in_dir("out.raw"), &got_len);
    cr_assert_eq(got_len, size);
    judge_crash(got, under, size, unit, read_flushed(), delay_ms);
    free(got);
    free(under);
}

Test(qcow2_discard, sigkill_around_discard_leaves_a_consistent_image)
{
    srand((unsigned)time(NULL));
    for (int i = 0; i < 3; i++)
        crash_once("", 64 * KIB, 50 + (unsigned)(rand() % 400));
    crash_once("cluster_size=4k", 4 * KIB, 50 + (unsigned)(rand() % 400));
    crash_once("extended_l2=on", 2 * KIB, 50 + (unsigned)(rand() % 400));
}
