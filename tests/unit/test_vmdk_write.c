/* formats/vmdk write side: disks made by our create and written by our
 * driver at scattered, unaligned offsets, then judged by qemu-img: compare
 * against the bytes we meant (kept in a raw twin), check, and info against
 * a disk qemu-img made with the same options.  Also streamOptimized order
 * rules, the twoGbMaxExtent file names, and a delta with copy-on-write of
 * partial grains from its base. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/format.h"
#include "core/img.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

static char dir[PATH_MAX];

static void make_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/imgfs-vmdkw-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* Test names start with create_, write_, stream_ and delta_. */
TestSuite(vmdk_write, .init = make_dir, .fini = remove_dir);

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char body[4096], cmd[8192 + PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "cd '%s' && (%s) >/dev/null 2>&1", dir, body);
    return system(cmd);
}

#define sh(...) cr_assert_eq(run(__VA_ARGS__), 0, "command failed")

static const char *in_dir(const char *name)
{
    static char paths[4][2 * PATH_MAX];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof(paths[0]), "%s/%s", dir, name);
    return p;
}

static char *slurp(const char *name)
{
    FILE *f = fopen(in_dir(name), "r");
    cr_assert_not_null(f, "%s", name);
    char *buf = calloc(1, 1 << 16);
    cr_assert_not_null(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static const struct img_format *vmdk(void)
{
    const struct img_format *f = img_format_by_name("vmdk");
    cr_assert_not_null(f);
    return f;
}

/* Create NAME with "k=v" options (NULL-terminated list). */
static int try_create(const char *name, uint64_t size, const char *backing, char *err,
                      const char *const *kv)
{
    struct img_kv opts[16];
    size_t n = 0;
    static char keys[16][64];
    for (; kv && kv[n]; n++) {
        const char *eq = strchr(kv[n], '=');
        snprintf(keys[n], sizeof(keys[n]), "%.*s", (int)(eq - kv[n]), kv[n]);
        opts[n] = (struct img_kv){ keys[n], eq + 1 };
    }
    struct img_create_opts o = { .size = size, .backing_file = backing,
                                 .backing_fmt = backing ? "vmdk" : NULL, .opts = opts,
                                 .n_opts = n };
    return vmdk()->create(in_dir(name), &o, err, IMG_ERRMSG_MAX);
}

static void create(const char *name, uint64_t size, const char *backing, const char *const *kv)
{
    char err[IMG_ERRMSG_MAX] = "";
    int r = try_create(name, size, backing, err, kv);
    cr_assert_eq(r, 0, "create %s: %s", name, err);
}

static struct img *open_rw(const char *name)
{
    struct img_open_opts o = { .format = "vmdk", .read_write = true };
    struct img *img;
    char err[IMG_ERRMSG_MAX];
    int r = img_open(in_dir(name), &o, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open %s: %s", name, err);
    return img;
}

/* ---- the raw twin: what the disk should read ---- */

static int twin_fd = -1;

static void twin_start(uint64_t size)
{
    twin_fd = open(in_dir("expect.raw"), O_RDWR | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(twin_fd, 0);
    cr_assert_eq(ftruncate(twin_fd, (off_t)size), 0);
}

static void pattern(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 9));
}

static void put(struct img *img, uint64_t off, size_t len, unsigned seed)
{
    uint8_t *buf = malloc(len);
    cr_assert_not_null(buf);
    pattern(buf, len, seed);
    int r = img->fmt->write(img, buf, len, off);
    cr_assert_eq(r, 0, "write 0x%llx+0x%zx: %s", (unsigned long long)off, len, img->errmsg);
    cr_assert_eq(pwrite(twin_fd, buf, len, (off_t)off), (ssize_t)len);
    free(buf);
}

static void zero(struct img *img, uint64_t off, size_t len)
{
    int r = img->fmt->write_zeroes(img, off, len, img->backing == NULL);
    cr_assert_eq(r, 0, "zero 0x%llx+0x%zx: %s", (unsigned long long)off, len, img->errmsg);
    uint8_t *z = calloc(1, len);
    cr_assert_eq(pwrite(twin_fd, z, len, (off_t)off), (ssize_t)len);
    free(z);
}

static void finish(struct img *img)
{
    cr_assert_eq(img->fmt->flush(img), 0, "flush: %s", img->errmsg);
    img_close(img);
    close(twin_fd);
    twin_fd = -1;
}

/* qemu reads what we meant, finds no error, and so does our reader. */
static void judge(const char *name)
{
    cr_assert_eq(run("qemu-img compare -f raw -F vmdk expect.raw %s", name), 0,
                 "qemu-img compare: %s differs from what was written", name);
    cr_assert_eq(run("qemu-img check -f vmdk %s", name), 0, "qemu-img check %s", name);
    struct img_open_opts o = { .format = "vmdk" };
    struct img *img;
    char err[IMG_ERRMSG_MAX];
    cr_assert_eq(img_open(in_dir(name), &o, &img, err, sizeof(err)), 0, "%s", err);
    int fd = open(in_dir("expect.raw"), O_RDONLY);
    uint8_t *a = malloc(MiB), *b = malloc(MiB);
    for (uint64_t off = 0; off < img->size; off += MiB) {
        size_t n = img->size - off < MiB ? img->size - off : MiB;
        cr_assert_eq(img_read(img, a, n, off), 0, "%s", img->errmsg);
        /* Holes of the twin are zeros: no need to read gigabytes of them. */
        off_t data = lseek(fd, (off_t)off, SEEK_DATA);
        if (data < 0 || (uint64_t)data >= off + n)
            memset(b, 0, n);
        else
            cr_assert_eq(pread(fd, b, n, (off_t)off), (ssize_t)n);
        cr_assert_eq(memcmp(a, b, n), 0, "our reader differs in 0x%llx+1M",
                     (unsigned long long)off);
    }
    free(a);
    free(b);
    close(fd);
    img_close(img);
}

/* The subformat-relevant facts of `qemu-img info` (no file names, CIDs or
 * sizes on the host) of our disk and of qemu-img's twin are the same. */
static const char *info_facts =
    "import json,sys; d=json.load(open(sys.argv[1])); s=d['format-specific']['data']; "
    "print(d['virtual-size'], d.get('cluster-size'), s['create-type'], "
    "[(e.get('format'), e.get('compressed'), e['virtual-size'], e.get('cluster-size')) "
    "for e in s['extents']], s['parent-cid'] == 4294967295)";

static void same_info_as_qemu(const char *ours, uint64_t size, const char *qemu_opts)
{
    sh("qemu-img create -q -f vmdk %s twin.vmdk %llu", qemu_opts, (unsigned long long)size);
    sh("qemu-img info --output=json %s > ours.json && qemu-img info --output=json twin.vmdk "
       "> twin.json", ours);
    sh("python3 -c \"%s\" ours.json > ours.txt && python3 -c \"%s\" twin.json > twin.txt",
       info_facts, info_facts);
    char *a = slurp("ours.txt"), *b = slurp("twin.txt");
    cr_assert_str_eq(a, b, "qemu-img info differs from qemu's twin");
    free(a);
    free(b);
}

/* ---- every subformat: scattered, unaligned, overlapping writes ---- */

static void scattered(struct img *img, uint64_t base)
{
    put(img, base + 0, 4 * KiB, 1);
    put(img, base + 100 * KiB + 3, 200 * KiB, 2);         /* unaligned, 4 grains */
    put(img, base + 1 * MiB, 64 * KiB, 3);                /* one whole grain */
    put(img, base + 1 * MiB + 1000, 5000, 4);              /* over a written grain */
    put(img, base + 33 * MiB - 700, 1400, 5);              /* across two grain tables */
    put(img, base + 40 * MiB + 512, 3 * MiB, 6);           /* whole grains in a run */
    zero(img, base + 40 * MiB + 64 * KiB, 128 * KiB);      /* whole written grains */
    zero(img, base + 100 * KiB + 10, 1000);               /* part of a written grain */
    put(img, base + 60 * MiB - 512, 512, 7);               /* the last sector */
}

static void subformat(const char *sub, bool zeroed)
{
    char opt[64], zopt[32];
    snprintf(opt, sizeof(opt), "subformat=%s", sub);
    snprintf(zopt, sizeof(zopt), "zeroed_grain=%s", zeroed ? "on" : "off");
    const char *kv[] = { opt, zopt, NULL };
    create("d.vmdk", 60 * MiB, NULL, kv);
    twin_start(60 * MiB);
    struct img *img = open_rw("d.vmdk");
    scattered(img, 0);
    finish(img);
    judge("d.vmdk");
    char qopts[160];
    snprintf(qopts, sizeof(qopts), "-o %s,%s", opt, zopt);
    same_info_as_qemu("d.vmdk", 60 * MiB, qopts);
}

Test(vmdk_write, write_monolithic_sparse) { subformat("monolithicSparse", false); }
Test(vmdk_write, write_monolithic_sparse_zeroed_grain) { subformat("monolithicSparse", true); }
Test(vmdk_write, write_monolithic_flat) { subformat("monolithicFlat", false); }

/* Our map of a sparse disk we wrote equals qemu-img map's data ranges. */
Test(vmdk_write, write_map_matches_qemu)
{
    const char *kv[] = { "zeroed_grain=on", NULL };
    create("m.vmdk", 60 * MiB, NULL, kv);
    twin_start(60 * MiB);
    struct img *img = open_rw("m.vmdk");
    scattered(img, 0);
    finish(img);
    sh("qemu-img map --output=json m.vmdk | python3 -c \"import json,sys; "
       "print([(e['start'], e['length']) for e in json.load(sys.stdin) if e['data']])\" "
       "> theirs.txt");
    struct img_open_opts o = { .format = "vmdk" };
    char err[IMG_ERRMSG_MAX];
    cr_assert_eq(img_open(in_dir("m.vmdk"), &o, &img, err, sizeof(err)), 0, "%s", err);
    FILE *f = fopen(in_dir("ours.txt"), "w");
    fputc('[', f);
    bool first = true;
    uint64_t run_start = 0, run_len = 0;
    for (uint64_t off = 0; off < img->size;) {
        struct img_extent e;
        cr_assert_eq(img_map(img, off, img->size - off, &e), 0);
        if (e.kind == IMG_DATA && run_len && run_start + run_len == off) {
            run_len += e.len;
        } else if (e.kind == IMG_DATA) {
            if (run_len)
                fprintf(f, "%s(%llu, %llu)", first ? "" : ", ", (unsigned long long)run_start,
                        (unsigned long long)run_len), first = false;
            run_start = off;
            run_len = e.len;
        }
        off += e.len;
    }
    if (run_len)
        fprintf(f, "%s(%llu, %llu)", first ? "" : ", ", (unsigned long long)run_start,
                (unsigned long long)run_len);
    fputs("]\n", f);
    fclose(f);
    img_close(img);
    char *a = slurp("ours.txt"), *b = slurp("theirs.txt");
    cr_assert_str_eq(a, b);
    free(a);
    free(b);
}

/* twoGbMaxExtent*: writes on both sides of the 2 GiB extent boundary, and
 * files named as qemu-img names them. */
static void split(const char *sub, char letter)
{
    char opt[64];
    snprintf(opt, sizeof(opt), "subformat=%s", sub);
    const char *kv[] = { opt, NULL };
    uint64_t size = 2 * GiB + 70 * MiB;
    create("big.vmdk", size, NULL, kv);
    struct stat st;
    char n1[64], n2[64], n3[64];
    snprintf(n1, sizeof(n1), "big-%c001.vmdk", letter);
    snprintf(n2, sizeof(n2), "big-%c002.vmdk", letter);
    snprintf(n3, sizeof(n3), "big-%c003.vmdk", letter);
    cr_assert_eq(stat(in_dir(n1), &st), 0, "%s missing", n1);
    cr_assert_eq(stat(in_dir(n2), &st), 0, "%s missing", n2);
    cr_assert_neq(stat(in_dir(n3), &st), 0, "%s should not exist", n3);
    char *desc = slurp("big.vmdk");
    char line[160];
    snprintf(line, sizeof(line), "RW 4194304 %s \"%s\"", letter == 'f' ? "FLAT" : "SPARSE", n1);
    cr_assert_not_null(strstr(desc, line), "%s", desc);
    snprintf(line, sizeof(line), "RW 143360 %s \"%s\"", letter == 'f' ? "FLAT" : "SPARSE", n2);
    cr_assert_not_null(strstr(desc, line), "%s", desc);
    free(desc);
    twin_start(size);
    struct img *img = open_rw("big.vmdk");
    put(img, 5 * MiB + 17, 100 * KiB, 1);
    put(img, 2 * GiB - 3000, 9000, 2);                /* across the two files */
    scattered(img, 2 * GiB);
    finish(img);
    judge("big.vmdk");
    char qopts[96];
    snprintf(qopts, sizeof(qopts), "-o %s", opt);
    same_info_as_qemu("big.vmdk", size, qopts);
}

Test(vmdk_write, write_two_gb_max_extent_sparse, .timeout = 120) { split("twoGbMaxExtentSparse", 's'); }
Test(vmdk_write, write_two_gb_max_extent_flat, .timeout = 120) { split("twoGbMaxExtentFlat", 'f'); }

/* ---- streamOptimized ---- */

Test(vmdk_write, stream_sequential)
{
    const char *kv[] = { "subformat=streamOptimized", NULL };
    create("s.vmdk", 60 * MiB + 1000, NULL, kv);   /* rounded up to a sector */
    twin_start(60 * MiB + 1024);
    struct img *img = open_rw("s.vmdk");
    put(img, 3, 4 * KiB, 1);                        /* partial grains, in order */
    put(img, 10 * KiB, 300 * KiB, 2);
    put(img, 1 * MiB, 1 * MiB, 3);
    cr_assert_eq(img->fmt->flush(img), 0, "%s", img->errmsg);   /* a tail, then more */
    put(img, 5 * MiB - 100, 200, 4);
    put(img, 40 * MiB, 64 * KiB, 5);
    put(img, 60 * MiB + 24, 1000, 6);               /* the short last grain */
    finish(img);
    judge("s.vmdk");
    same_info_as_qemu("s.vmdk", 60 * MiB + 1024, "-o subformat=streamOptimized");
    /* VMware's layout: the header says "directory at the end". */
    sh("python3 -c \"import sys; h=open('s.vmdk','rb').read(512); "
       "sys.exit(h[56:64] != b'\\xff'*8)\"");
}

Test(vmdk_write, stream_compressed_entry)
{
    const char *kv[] = { "subformat=streamOptimized", NULL };
    create("s.vmdk", 4 * MiB, NULL, kv);
    twin_start(4 * MiB);
    struct img *img = open_rw("s.vmdk");
    uint8_t *g = malloc(64 * KiB);
    /* Slightly out of order, as convert -c's threads deliver them. */
    const unsigned order[] = { 1, 0, 3, 2, 5, 4, 63 };
    for (size_t i = 0; i < sizeof(order) / sizeof(*order); i++) {
        pattern(g, 64 * KiB, order[i]);
        cr_assert_eq(img->fmt->write_compressed(img, g, 64 * KiB, order[i] * 64 * KiB), 0,
                     "%s", img->errmsg);
        cr_assert_eq(pwrite(twin_fd, g, 64 * KiB, (off_t)(order[i] * 64 * KiB)),
                     (ssize_t)(64 * KiB));
    }
    free(g);
    finish(img);
    judge("s.vmdk");
}

Test(vmdk_write, stream_refuses_going_back)
{
    const char *kv[] = { "subformat=streamOptimized", NULL };
    create("s.vmdk", 200 * MiB, NULL, kv);
    struct img *img = open_rw("s.vmdk");
    uint8_t *g = calloc(1, 64 * KiB);
    g[0] = 1;
    /* More grains than the reorder queue holds, then one from before. */
    for (unsigned i = 10; i < 100; i++)
        cr_assert_eq(img->fmt->write(img, g, 64 * KiB, i * 64 * KiB), 0, "%s", img->errmsg);
    cr_assert_lt(img->fmt->write(img, g, 64 * KiB, 0), 0);
    cr_assert_not_null(strstr(img->errmsg, "increasing order"), "%s", img->errmsg);
    cr_assert_lt(img->fmt->write(img, g, 512, 50 * 64 * KiB), 0);
    cr_assert_not_null(strstr(img->errmsg, "written already"), "%s", img->errmsg);
    free(g);
    cr_assert_eq(img->fmt->flush(img), 0, "%s", img->errmsg);
    img_close(img);
    sh("qemu-img check s.vmdk");
}

Test(vmdk_write, stream_written_by_qemu_is_sealed)
{
    sh("qemu-img create -q -f vmdk -o subformat=streamOptimized q.vmdk 4M && "
       "qemu-io -f vmdk -c 'write -P 0x5a 0 64k' q.vmdk");
    struct img *img = open_rw("q.vmdk");
    uint8_t g[512] = { 1 };
    cr_assert_lt(img->fmt->write(img, g, sizeof(g), MiB), 0);
    cr_assert_not_null(strstr(img->errmsg, "holds grains already"), "%s", img->errmsg);
    img_close(img);
    sh("qemu-img check q.vmdk");
}

/* An empty stream made by qemu-img (tables at the front) takes our grains. */
Test(vmdk_write, stream_empty_from_qemu)
{
    sh("qemu-img create -q -f vmdk -o subformat=streamOptimized q.vmdk 4M");
    twin_start(4 * MiB);
    struct img *img = open_rw("q.vmdk");
    put(img, 70 * KiB, 100 * KiB, 9);
    finish(img);
    judge("q.vmdk");
}

/* ---- a delta over a base ---- */

Test(vmdk_write, delta_copy_on_write)
{
    sh("qemu-img create -q -f vmdk base.vmdk 8M && qemu-io -f vmdk -c 'write -P 0xaa 0 8M' "
       "base.vmdk && qemu-img convert -O raw base.vmdk expect.raw");
    create("delta.vmdk", 8 * MiB, "base.vmdk", NULL);
    twin_fd = open(in_dir("expect.raw"), O_RDWR);
    cr_assert_geq(twin_fd, 0);
    struct img *img = open_rw("delta.vmdk");
    cr_assert_not_null(img->backing);
    put(img, 1000, 3000, 1);                  /* partial grain: the rest from the base */
    put(img, 200 * KiB - 10, 20, 2);          /* across two grains */
    zero(img, 1 * MiB + 512, 4096);           /* zeros over base data */
    zero(img, 2 * MiB, 64 * KiB);             /* a whole grain of zeros */
    put(img, 8 * MiB - 1, 1, 3);
    finish(img);
    judge("delta.vmdk");
    sh("qemu-img info --output=json delta.vmdk | grep -q '\"backing-filename\": \"base.vmdk\"'");
    /* The child's parentCID is the base's CID. */
    sh("test \"$(grep -a '^CID=' base.vmdk | cut -d= -f2)\" = "
       "\"$(grep -a '^parentCID=' delta.vmdk | cut -d= -f2)\"");
    sh("grep -aq '^parentFileNameHint=\"base.vmdk\"' delta.vmdk");
    /* The base was not touched. */
    sh("qemu-img compare -q base.vmdk \"$(echo base.vmdk)\" && "
       "qemu-io -f vmdk -c 'read -P 0xaa 0 8M' base.vmdk");
}

Test(vmdk_write, delta_zeroed_grain_over_base)
{
    sh("qemu-img create -q -f vmdk base.vmdk 2M && qemu-io -f vmdk -c 'write -P 0xbb 0 2M' "
       "base.vmdk && qemu-img convert -O raw base.vmdk expect.raw");
    const char *kv[] = { "zeroed_grain=on", NULL };
    create("delta.vmdk", 2 * MiB, "base.vmdk", kv);
    twin_fd = open(in_dir("expect.raw"), O_RDWR);
    struct img *img = open_rw("delta.vmdk");
    zero(img, 64 * KiB, 128 * KiB);           /* zeroed-grain entries hide the base */
    put(img, 64 * KiB + 100, 100, 4);         /* then data inside a zeroed grain */
    finish(img);
    judge("delta.vmdk");
}

/* ---- create: options and descriptor ---- */

static void expect_create_error(const char *const *kv, const char *text)
{
    char err[IMG_ERRMSG_MAX] = "";
    cr_assert_lt(try_create("e.vmdk", MiB, NULL, err, kv), 0);
    cr_assert_not_null(strstr(err, text), "message '%s' lacks '%s'", err, text);
}

Test(vmdk_write, create_bad_options)
{
    const char *a[] = { "foo=1", NULL };
    expect_create_error(a, "Invalid parameter 'foo'");
    const char *b[] = { "compat6=on", "hwversion=7", NULL };
    expect_create_error(b, "compat6 cannot be enabled with hwversion set");
    const char *c[] = { "subformat=sparse", NULL };
    expect_create_error(c, "invalid parameter value: sparse");
    const char *d[] = { "adapter_type=scsi", NULL };
    expect_create_error(d, "invalid parameter value: scsi");
    const char *e[] = { "zeroed_grain=maybe", NULL };
    expect_create_error(e, "zeroed_grain");
}

Test(vmdk_write, create_descriptor_fields)
{
    const char *kv[] = { "adapter_type=lsilogic", "compat6=on", "toolsversion=42", NULL };
    create("d.vmdk", 5 * GiB, NULL, kv);
    sh("grep -aq '^ddb.virtualHWVersion = \"6\"$' d.vmdk");
    sh("grep -aq '^ddb.adapterType = \"lsilogic\"$' d.vmdk");
    sh("grep -aq '^ddb.geometry.heads = \"255\"$' d.vmdk");
    sh("grep -aq '^ddb.geometry.cylinders = \"652\"$' d.vmdk");
    sh("grep -aq '^ddb.toolsVersion = \"42\"$' d.vmdk");
    sh("grep -aq '^parentCID=ffffffff$' d.vmdk");
    sh("grep -aq '^createType=\"monolithicSparse\"$' d.vmdk");
    sh("grep -aq '^RW 10485760 SPARSE \"d.vmdk\"$' d.vmdk");
    const char *kv2[] = { "subformat=monolithicFlat", "hwversion=7", NULL };
    create("f.vmdk", 1000, NULL, kv2);
    sh("grep -q '^RW 2 FLAT \"f-flat.vmdk\" 0$' f.vmdk && test $(stat -c %%s f-flat.vmdk) = 1024");
    sh("grep -q '^ddb.virtualHWVersion = \"7\"$' f.vmdk && grep -q 'heads = \"16\"' f.vmdk");
    sh("qemu-img check d.vmdk && qemu-img info f.vmdk");
    /* Two disks get two CIDs. */
    create("g.vmdk", MiB, NULL, NULL);
    sh("test \"$(grep -a '^CID=' g.vmdk)\" != \"$(grep -a '^CID=' d.vmdk)\"");
}

/* What qemu-img writes reads back through our driver and takes our writes. */
Test(vmdk_write, write_into_qemu_made_disk)
{
    sh("qemu-img create -q -f vmdk -o zeroed_grain=on q.vmdk 20M && "
       "qemu-io -f vmdk -c 'write -P 0x42 1M 100k' -c 'write -z 4M 1M' q.vmdk && "
       "qemu-img convert -O raw q.vmdk expect.raw");
    twin_fd = open(in_dir("expect.raw"), O_RDWR);
    struct img *img = open_rw("q.vmdk");
    put(img, 1 * MiB + 50 * KiB, 100 * KiB, 1);   /* over qemu's grains and past them */
    put(img, 4 * MiB + 10, 10, 2);                /* into a zeroed grain */
    put(img, 19 * MiB, 1 * MiB, 3);
    finish(img);
    judge("q.vmdk");
}

Test(vmdk_write, write_refused_when_read_only)
{
    create("r.vmdk", MiB, NULL, NULL);
    struct img_open_opts o = { .format = "vmdk" };
    struct img *img;
    char err[IMG_ERRMSG_MAX];
    cr_assert_eq(img_open(in_dir("r.vmdk"), &o, &img, err, sizeof(err)), 0, "%s", err);
    uint8_t b[512] = { 0 };
    cr_assert_lt(img->fmt->write(img, b, sizeof(b), 0), 0);
    cr_assert_lt(img->fmt->write(img, b, sizeof(b), 2 * MiB), 0);
    img_close(img);
}
