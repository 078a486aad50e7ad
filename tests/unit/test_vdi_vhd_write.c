/* The VDI and VHD (vpc) write side: images created and written by our
 * drivers are checked by qemu-img (compare against the expected raw bytes,
 * check where qemu can check the format, info against qemu-img's own create
 * of the same size and options), read back through our readers, and
 * survive a kill between any two steps of a block allocation. */
#include "vdi_vhd_util.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#define KIB 1024ull
#define MIB (1024ull * 1024)
#define GIB (1024ull * MIB)

/* Test seams in formats/vdi.c and formats/vhd.c. */
extern void (*imgfs_vdi_alloc_step_hook)(int step);
extern void (*imgfs_vhd_alloc_step_hook)(int step);

TestSuite(vdi_write, .init = tdir_make, .fini = tdir_remove);
TestSuite(vhd_write, .init = tdir_make, .fini = tdir_remove);
TestSuite(vdi_vhd_crash, .init = tdir_make, .fini = tdir_remove);

/* ---- creating and opening with our drivers ---- */

static void ours_create(const char *fmt, const char *name, uint64_t size, const char *opts)
{
    const struct img_format *f = img_format_by_name(fmt);
    cr_assert(f && f->create, "no create for %s", fmt);
    struct img_kv kv[4];
    size_t n = 0;
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", opts ? opts : "");
    for (char *save = buf, *tok; (tok = strsep(&save, ",")) && n < 4; ) {
        if (!*tok)
            continue;
        char *eq = strchr(tok, '=');
        cr_assert_not_null(eq);
        *eq = '\0';
        kv[n++] = (struct img_kv){ tok, eq + 1 };
    }
    struct img_create_opts o = { .size = size, .opts = kv, .n_opts = n };
    char err[256] = "";
    int r = f->create(tpath(name), &o, err, sizeof(err));
    cr_assert_eq(r, 0, "create %s %s: %s", fmt, name, err);
}

static struct img *open_rw(const char *name, const char *fmt)
{
    struct img_open_opts o = { .format = fmt, .read_write = true };
    struct img *img = NULL;
    char err[IMG_ERRMSG_MAX];
    int r = img_open(tpath(name), &o, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open %s for writing: %s", name, err);
    return img;
}

static void ours_write(struct img *img, uint64_t off, uint64_t len, int byte)
{
    uint8_t *buf = malloc(len + 1);
    cr_assert_not_null(buf);
    memset(buf, byte, len);
    int r = img->fmt->write(img, buf, len, off);
    cr_assert_eq(r, 0, "write %llu+%llu: %s", (unsigned long long)off,
                 (unsigned long long)len, img->errmsg);
    free(buf);
}

/* ---- the expected guest bytes, kept alongside ---- */

struct expect {
    uint8_t *bytes;
    uint64_t size;
};

static struct expect expect_new(uint64_t size)
{
    struct expect e = { calloc(1, size + 1), size };
    cr_assert_not_null(e.bytes);
    return e;
}

struct pattern {
    uint64_t off, len;
    int byte;
};

/* Scattered, unaligned, across 1 MiB (VDI) and 2 MiB (VHD) block
 * boundaries, one overwriting another, one at the very end. */
static const struct pattern patterns[] = {
    { 0, 512, 0x11 },
    { 1 * MIB - 700, 1400, 0x22 },            /* VDI boundary */
    { 2 * MIB - 3, 7, 0x33 },                 /* VDI and VHD boundary */
    { 3 * MIB + 12345, 3 * MIB + 777, 0x44 }, /* spans several blocks */
    { 4 * MIB + 1, 100, 0x55 },               /* inside the previous one */
    { 9 * MIB + 511, 1, 0x66 },
};

static void apply_patterns(struct img *img, struct expect *e)
{
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++) {
        const struct pattern *p = &patterns[i];
        ours_write(img, p->off, p->len, p->byte);
        memset(e->bytes + p->off, p->byte, p->len);
    }
    /* the last byte of the disk */
    ours_write(img, e->size - 1, 1, 0x77);
    e->bytes[e->size - 1] = 0x77;
}

static void expect_write_raw(const struct expect *e, const char *name)
{
    twrite(tpath(name), e->bytes, e->size);
}

/* qemu-img compare against the expected bytes (sizes: expect_our_read). */
static void expect_qemu_compare(const char *name, const char *fmt, const struct expect *e)
{
    expect_write_raw(e, "expected.raw");
    char *out = tcapture("qemu-img compare -f %s -F raw '%s' expected.raw 2>&1; echo rc=$?",
                         fmt, name);
    cr_expect(strstr(out, "Images are identical.") && strstr(out, "rc=0"),
              "%s: qemu-img compare says: %s", name, out);
    free(out);
}

/* Our reader sees the expected bytes too. */
static void expect_our_read(const char *name, const char *fmt, const struct expect *e)
{
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath(name), fmt, err, sizeof(err));
    cr_assert_not_null(img, "%s: %s", name, err);
    cr_assert_eq(img->size, e->size);
    uint8_t *buf = malloc(e->size + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(img_read(img, buf, e->size, 0), 0, "%s", img->errmsg);
    cr_expect(memcmp(buf, e->bytes, e->size) == 0, "%s: our reader differs", name);
    free(buf);
    img_close(img);
}

static void expect_qemu_check_clean(const char *name)
{
    char *out = tcapture("qemu-img check -f vdi '%s' 2>&1; echo rc=$?", name);
    cr_expect(strstr(out, "No errors were found") && strstr(out, "rc=0"),
              "%s: qemu-img check says: %s", name, out);
    free(out);
}

/* "key": value of qemu-img info --output=json (numbers and strings). */
static char *json_value(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": ", key);
    const char *p = strstr(json, pat);
    if (!p)
        return strdup("(absent)");
    p += strlen(pat);
    size_t n = strcspn(p, ",\n}");
    return strndup(p, n);
}

/* virtual-size, cluster-size and format as qemu-img info prints them for
 * our image and for qemu-img's own create with the same options. */
static void expect_info_like_qemu(const char *ours, const char *theirs, const char *fmt)
{
    static const char *const keys[] = { "virtual-size", "cluster-size", "format" };
    char *a = tcapture("qemu-img info -f %s --output=json '%s'", fmt, ours);
    char *b = tcapture("qemu-img info -f %s --output=json '%s'", fmt, theirs);
    for (size_t i = 0; i < 3; i++) {
        char *va = json_value(a, keys[i]), *vb = json_value(b, keys[i]);
        cr_expect_str_eq(va, vb, "%s: %s is %s, qemu-img's own %s", ours, keys[i], va, vb);
        free(va);
        free(vb);
    }
    free(a);
    free(b);
}

static uint8_t *slurp(const char *name, size_t off, size_t len)
{
    uint8_t *buf = calloc(1, len + 1);
    cr_assert_not_null(buf);
    int fd = open(tpath(name), O_RDONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pread(fd, buf, len, (off_t)off), (ssize_t)len, "%s too short", name);
    close(fd);
    return buf;
}

static uint64_t file_size(const char *name)
{
    struct stat st;
    cr_assert_eq(stat(tpath(name), &st), 0);
    return (uint64_t)st.st_size;
}

/* Byte ranges [from, to) of two files that must be equal. */
static void expect_same_bytes(const char *a, const char *b, size_t from, size_t to,
                              const char *what)
{
    uint8_t *x = slurp(a, from, to - from), *y = slurp(b, from, to - from);
    for (size_t i = 0; i < to - from; i++)
        if (x[i] != y[i]) {
            cr_expect_fail("%s: %s byte 0x%zx is 0x%02x, qemu's 0x%02x", a, what, from + i,
                           x[i], y[i]);
            break;
        }
    free(x);
    free(y);
}

/* ==== VDI ==== */

/* Header and block map as qemu-img writes them, except the text and the
 * random UUIDs. */
static void expect_vdi_layout_like_qemu(uint64_t size, const char *opts)
{
    ours_create("vdi", "ours.vdi", size, opts);
    tsh("qemu-img create -q -f vdi %s%s theirs.vdi %llu", opts ? "-o " : "", opts ? opts : "",
        (unsigned long long)size);
    cr_expect_eq(file_size("ours.vdi"), file_size("theirs.vdi"), "file sizes differ");
    expect_same_bytes("ours.vdi", "theirs.vdi", 0x40, 0x188, "header");
    expect_same_bytes("ours.vdi", "theirs.vdi", 0x1a8, 0x200, "header tail");
    uint8_t *h = slurp("ours.vdi", 0, 512);
    size_t data = get_le32(h + 0x158);
    free(h);
    expect_same_bytes("ours.vdi", "theirs.vdi", 0x200, data, "block map");
    expect_info_like_qemu("ours.vdi", "theirs.vdi", "vdi");
    expect_qemu_check_clean("ours.vdi");
}

Test(vdi_write, create_dynamic_like_qemu)
{
    expect_vdi_layout_like_qemu(1 * MIB, NULL);
    expect_vdi_layout_like_qemu(10 * MIB + 1, NULL);
    expect_vdi_layout_like_qemu(3000 * MIB, NULL);
    expect_vdi_layout_like_qemu(0, NULL);
}

Test(vdi_write, create_static_like_qemu)
{
    expect_vdi_layout_like_qemu(1 * MIB, "static=on");
    expect_vdi_layout_like_qemu(10 * MIB + 1, "static=on");
}

Test(vdi_write, create_refuses_what_qemu_refuses)
{
    const struct img_format *f = img_format_by_name("vdi");
    char err[256];
    struct img_kv bad_key = { "cluster_size", "1M" }, bad_bool = { "static", "maybe" };
    struct img_create_opts o = { .size = MIB, .opts = &bad_key, .n_opts = 1 };
    cr_expect_eq(f->create(tpath("x.vdi"), &o, err, sizeof(err)), -EINVAL);
    cr_expect_str_eq(err, "Invalid parameter 'cluster_size'");
    o.opts = &bad_bool;
    cr_expect_eq(f->create(tpath("x.vdi"), &o, err, sizeof(err)), -EINVAL);
    cr_expect_str_eq(err, "Parameter 'static' expects 'on' or 'off'");
    struct img_create_opts huge = { .size = 3000000 * GIB };
    cr_expect_eq(f->create(tpath("x.vdi"), &huge, err, sizeof(err)), -ENOTSUP);
    cr_expect(strstr(err, "max supported is 0x1fffff8000000"), "%s", err);
    struct img_create_opts backing = { .size = MIB, .backing_file = "b.vdi" };
    cr_expect_lt(f->create(tpath("x.vdi"), &backing, err, sizeof(err)), 0);
}

static void vdi_patterns(const char *opts)
{
    uint64_t size = 10 * MIB + 1536;
    ours_create("vdi", "p.vdi", size, opts);
    struct img *img = open_rw("p.vdi", "vdi");
    struct expect e = expect_new(img->size);
    apply_patterns(img, &e);
    cr_assert_eq(img->fmt->flush(img), 0);
    img_close(img);
    expect_qemu_compare("p.vdi", "vdi", &e);
    expect_qemu_check_clean("p.vdi");
    expect_our_read("p.vdi", "vdi", &e);
    tsh("qemu-img map -f vdi --output=json p.vdi > p.map");
    free(e.bytes);
}

Test(vdi_write, dynamic_patterns)
{
    vdi_patterns(NULL);
}

Test(vdi_write, static_patterns)
{
    vdi_patterns("static=on");
}

/* The map of our writes: blocks touched are data, the others stay
 * unallocated (as qemu-img map says too). */
Test(vdi_write, untouched_blocks_stay_unallocated)
{
    ours_create("vdi", "u.vdi", 8 * MIB, NULL);
    struct img *img = open_rw("u.vdi", "vdi");
    ours_write(img, 2 * MIB + 5, 10, 0xaa);
    ours_write(img, 6 * MIB - 1, 2, 0xbb);   /* blocks 5 and 6 */
    img_close(img);
    img = topen(tpath("u.vdi"), "vdi", (char[IMG_ERRMSG_MAX]){ 0 }, IMG_ERRMSG_MAX);
    cr_assert_not_null(img);
    texpect_map_like_qemu(img, "u.vdi", "vdi");
    struct tranges rs = our_data_ranges(img);
    cr_expect_eq(rs.n, 2);
    cr_expect(rs.r[0].off == 2 * MIB && rs.r[0].len == MIB);
    cr_expect(rs.n > 1 && rs.r[1].off == 5 * MIB && rs.r[1].len == 2 * MIB);
    free(rs.r);
    img_close(img);
}

static void zeroes_case(const char *fmt, const char *name, const char *opts, bool may_unmap)
{
    uint64_t block = strcmp(fmt, "vdi") == 0 ? MIB : 2 * MIB;
    ours_create(fmt, name, 6 * block, opts);
    struct img *img = open_rw(name, fmt);
    struct expect e = expect_new(img->size);
    ours_write(img, 0, 2 * block, 0x5a);
    memset(e.bytes, 0x5a, 2 * block);
    /* from inside block 0 over block 1 into the unallocated blocks 2, 3 */
    cr_assert_eq(img->fmt->write_zeroes(img, block / 2 + 512, 3 * block, may_unmap), 0, "%s",
                 img->errmsg);
    memset(e.bytes + block / 2 + 512, 0, 3 * block);
    cr_assert_eq(img->fmt->flush(img), 0);
    img_close(img);
    expect_qemu_compare(name, fmt, &e);
    expect_our_read(name, fmt, &e);
    img = topen(tpath(name), fmt, (char[IMG_ERRMSG_MAX]){ 0 }, IMG_ERRMSG_MAX);
    cr_assert_not_null(img);
    struct img_extent ext;
    cr_assert_eq(img_map(img, 2 * block, block, &ext), 0);
    if (!opts || !(strstr(opts, "fixed") || strstr(opts, "static")))
        cr_expect_eq(ext.kind, IMG_UNALLOCATED, "%s: zeroed unallocated block allocated", name);
    img_close(img);
    free(e.bytes);
}

Test(vdi_write, write_zeroes)
{
    zeroes_case("vdi", "z1.vdi", NULL, true);
    zeroes_case("vdi", "z2.vdi", NULL, false);
    zeroes_case("vdi", "z3.vdi", "static=on", true);
    expect_qemu_check_clean("z1.vdi");
    expect_qemu_check_clean("z3.vdi");
}

Test(vdi_write, our_check_agrees_with_qemu)
{
    ours_create("vdi", "c.vdi", 4 * MIB, NULL);
    struct img *img = open_rw("c.vdi", "vdi");
    ours_write(img, MIB, 5, 1);
    struct img_check res = { 0 };
    cr_assert_eq(img->fmt->check(img, &res, 0), 0);
    cr_expect_eq(res.corruptions, 0);
    cr_expect_eq(res.leaks, 0);
    cr_expect_eq(res.allocated_clusters, 1);
    cr_expect_eq(res.total_clusters, 4);
    img_close(img);
}

Test(vdi_write, refuses_writes_past_the_end_and_read_only)
{
    ours_create("vdi", "e.vdi", 2 * MIB, NULL);
    struct img *img = open_rw("e.vdi", "vdi");
    uint8_t b[2] = { 1, 2 };
    cr_expect_eq(img->fmt->write(img, b, 2, 2 * MIB - 1), -EINVAL);
    img_close(img);
    char err[IMG_ERRMSG_MAX];
    img = topen(tpath("e.vdi"), "vdi", err, sizeof(err));
    cr_assert_not_null(img);
    cr_expect_eq(img->fmt->write(img, b, 2, 0), -EROFS);
    img_close(img);
}

/* ==== VHD ==== */

/* Footer (but its timestamp, checksum and UUID), dynamic header and BAT
 * as qemu-img writes them; the footer copy at 0 equals the one at the end. */
static void expect_vhd_layout_like_qemu(uint64_t size, const char *opts)
{
    ours_create("vpc", "ours.vhd", size, opts);
    tsh("qemu-img create -q -f vpc %s%s theirs.vhd %llu", opts ? "-o " : "", opts ? opts : "",
        (unsigned long long)size);
    uint64_t len = file_size("ours.vhd");
    cr_expect_eq(len, file_size("theirs.vhd"), "size %llu: file sizes differ",
                 (unsigned long long)size);
    uint64_t foot = len - 512;
    expect_same_bytes("ours.vhd", "theirs.vhd", foot, foot + 24, "footer");
    expect_same_bytes("ours.vhd", "theirs.vhd", foot + 28, foot + 64, "footer");
    expect_same_bytes("ours.vhd", "theirs.vhd", foot + 84, foot + 512, "footer tail");
    uint8_t *f = slurp("ours.vhd", foot, 512);
    uint32_t sum = 0;
    for (int i = 0; i < 512; i++)
        sum += (i >= 64 && i < 68) ? 0 : f[i];
    cr_expect_eq(~sum, get_be32(f + 64), "footer checksum");
    if (get_be32(f + 60) == 3) {
        uint8_t *copy = slurp("ours.vhd", 0, 512);
        cr_expect(memcmp(copy, f, 512) == 0, "footer copy at 0 differs");
        free(copy);
        expect_same_bytes("ours.vhd", "theirs.vhd", 512, foot, "dynamic header and BAT");
    }
    free(f);
    expect_info_like_qemu("ours.vhd", "theirs.vhd", "vpc");
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath("ours.vhd"), "vpc", err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    char *json = tcapture("qemu-img info -f vpc --output=json theirs.vhd");
    char *vs = json_value(json, "virtual-size");
    cr_expect_eq(img->size, strtoull(vs, NULL, 10), "our reader's size");
    free(vs);
    free(json);
    img_close(img);
}

Test(vhd_write, create_dynamic_like_qemu)
{
    static const uint64_t sizes[] = { MIB, 10 * MIB + 1, 127 * GIB, 1079297, 0, 512,
                                      2040 * GIB };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        expect_vhd_layout_like_qemu(sizes[i], NULL);
        expect_vhd_layout_like_qemu(sizes[i], "force_size=on");
    }
}

Test(vhd_write, create_fixed_like_qemu)
{
    static const uint64_t sizes[] = { MIB, 10 * MIB + 1, 127 * GIB, 1079297 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        expect_vhd_layout_like_qemu(sizes[i], "subformat=fixed");
        expect_vhd_layout_like_qemu(sizes[i], "subformat=fixed,force_size=on");
    }
}

Test(vhd_write, create_refuses_what_qemu_refuses)
{
    const struct img_format *f = img_format_by_name("vpc");
    char err[256];
    struct img_kv bad_sub = { "subformat", "sparse" }, bad_bool = { "force_size", "x" };
    struct img_create_opts o = { .size = MIB, .opts = &bad_sub, .n_opts = 1 };
    cr_expect_eq(f->create(tpath("x.vhd"), &o, err, sizeof(err)), -EINVAL);
    cr_expect_str_eq(err, "Parameter 'subformat' does not accept value 'sparse'");
    o.opts = &bad_bool;
    cr_expect_eq(f->create(tpath("x.vhd"), &o, err, sizeof(err)), -EINVAL);
    cr_expect_str_eq(err, "Parameter 'force_size' expects 'on' or 'off'");
    struct img_create_opts huge = { .size = 2041 * GIB };
    cr_expect_eq(f->create(tpath("x.vhd"), &huge, err, sizeof(err)), -EFBIG);
    cr_expect(strstr(err, "too large for file format 'vpc'"), "%s", err);
}

static void vhd_patterns(const char *opts)
{
    ours_create("vpc", "p.vhd", 10 * MIB + 1, opts);
    struct img *img = open_rw("p.vhd", "vpc");
    struct expect e = expect_new(img->size);
    apply_patterns(img, &e);
    cr_assert_eq(img->fmt->flush(img), 0);
    img_close(img);
    expect_qemu_compare("p.vhd", "vpc", &e);
    expect_our_read("p.vhd", "vpc", &e);
    /* qemu goes on writing where we stopped */
    tsh("qemu-io -f vpc -c 'write -P 0x99 %llu 4096' p.vhd", (unsigned long long)(8 * MIB));
    memset(e.bytes + 8 * MIB, 0x99, 4096);
    expect_qemu_compare("p.vhd", "vpc", &e);
    expect_our_read("p.vhd", "vpc", &e);
    free(e.bytes);
}

Test(vhd_write, dynamic_patterns)
{
    vhd_patterns(NULL);
}

Test(vhd_write, dynamic_force_size_patterns)
{
    vhd_patterns("force_size=on");
}

Test(vhd_write, fixed_patterns)
{
    vhd_patterns("subformat=fixed");
}

Test(vhd_write, dynamic_blocks_and_bitmaps)
{
    ours_create("vpc", "b.vhd", 8 * MIB, NULL);
    struct img *img = open_rw("b.vhd", "vpc");
    ours_write(img, 4 * MIB + 3, 5, 0xcc);    /* block 2 first */
    ours_write(img, 1 * MIB, 512, 0xdd);      /* then block 0 */
    img_close(img);
    /* blocks in allocation order after the BAT; bitmaps all ones; the
     * file ends in the footer */
    uint8_t *bat = slurp("b.vhd", 1536, 16);
    cr_expect_eq(get_be32(bat + 8), 2048 / 512);
    cr_expect_eq(get_be32(bat + 0), (2048 + 512 + 2 * MIB) / 512);
    cr_expect_eq(get_be32(bat + 4), 0xffffffffu);
    free(bat);
    uint8_t *bm = slurp("b.vhd", 2048, 512);
    for (int i = 0; i < 512; i++)
        cr_assert_eq(bm[i], 0xff);
    free(bm);
    cr_expect_eq(file_size("b.vhd"), 2048 + 2 * (512 + 2 * MIB) + 512);
    struct img *r = topen(tpath("b.vhd"), "vpc", (char[IMG_ERRMSG_MAX]){ 0 }, IMG_ERRMSG_MAX);
    cr_assert_not_null(r);
    texpect_map_like_qemu(r, "b.vhd", "vpc");
    texpect_bytes_like_qemu(r, "b.vhd", "vpc");
    img_close(r);
}

Test(vhd_write, write_zeroes)
{
    zeroes_case("vpc", "z1.vhd", NULL, true);
    zeroes_case("vpc", "z2.vhd", NULL, false);
    zeroes_case("vpc", "z3.vhd", "subformat=fixed", true);
}

Test(vhd_write, differencing_refused)
{
    struct img *img = NULL;
    ours_create("vpc", "d.vhd", 4 * MIB, NULL);
    /* turn it into a differencing disk: type 4 in both footers */
    uint8_t *f = slurp("d.vhd", 0, 512);
    put_be32(f + 60, 4);
    uint32_t sum = 0;
    for (int i = 0; i < 512; i++)
        sum += (i >= 64 && i < 68) ? 0 : f[i];
    put_be32(f + 64, ~sum);
    tpwrite(tpath("d.vhd"), f, 512, 0);
    free(f);
    img = open_rw("d.vhd", "vpc");
    uint8_t b = 1;
    cr_expect_eq(img->fmt->write(img, &b, 1, 0), -ENOTSUP);
    img_close(img);
}

/* ==== many writers at once (convert runs several) ==== */

struct writer_arg {
    struct img *img;
    int id, n;
};

static void *writer_main(void *p)
{
    struct writer_arg *a = p;
    uint8_t buf[64 * 1024];
    memset(buf, 0x10 + a->id, sizeof(buf));
    for (int k = a->id; k < 128; k += a->n)
        if (a->img->fmt->write(a->img, buf, sizeof(buf), (uint64_t)k * sizeof(buf)) != 0)
            return (void *)1;
    return NULL;
}

static void concurrent_case(const char *fmt, const char *name)
{
    ours_create(fmt, name, 8 * MIB, NULL);
    struct img *img = open_rw(name, fmt);
    struct expect e = expect_new(img->size);
    enum { N = 4 };
    pthread_t t[N];
    struct writer_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct writer_arg){ img, i, N };
        cr_assert_eq(pthread_create(&t[i], NULL, writer_main, &args[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        cr_expect_null(rc, "writer %d failed: %s", i, img->errmsg);
    }
    for (int k = 0; k < 128; k++)
        memset(e.bytes + (uint64_t)k * 65536, 0x10 + k % N, 65536);
    img_close(img);
    expect_qemu_compare(name, fmt, &e);
    free(e.bytes);
}

Test(vdi_write, concurrent_writers)
{
    concurrent_case("vdi", "t.vdi");
    expect_qemu_check_clean("t.vdi");
}

Test(vhd_write, concurrent_writers)
{
    concurrent_case("vpc", "t.vhd");
}

/* ==== a kill between the steps of a block allocation ==== */

static int kill_at_step;

static void kill_here(int step)
{
    if (step == kill_at_step)
        raise(SIGKILL);
}

/* In a child process: write `byte` at `off` (an unallocated block) and
 * get killed after allocation step `step`. */
static void write_and_die(const char *name, const char *fmt, int step, uint64_t off, int byte)
{
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        kill_at_step = step;
        imgfs_vdi_alloc_step_hook = kill_here;
        imgfs_vhd_alloc_step_hook = kill_here;
        struct img_open_opts o = { .format = fmt, .read_write = true };
        struct img *img = NULL;
        char err[IMG_ERRMSG_MAX];
        if (img_open(tpath(name), &o, &img, err, sizeof(err)) < 0)
            _exit(2);
        uint8_t buf[4096];
        memset(buf, byte, sizeof(buf));
        img->fmt->write(img, buf, sizeof(buf), off);
        _exit(3);   /* not reached: the hook kills us */
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "child was not killed at step %d (status 0x%x)", step, status);
}

/* Steps 1 and 2 leave the old contents; step 3 completes the write. */
static void crash_case(const char *fmt, const char *ext, uint64_t block, int step)
{
    char name[32];
    snprintf(name, sizeof(name), "k%d.%s", step, ext);
    ours_create(fmt, name, 4 * block, NULL);
    struct img *img = open_rw(name, fmt);
    struct expect e = expect_new(img->size);
    ours_write(img, 0, 4096, 0x01);          /* one block already there */
    memset(e.bytes, 0x01, 4096);
    img_close(img);

    write_and_die(name, fmt, step, 2 * block + 100, 0x02);
    if (step == 3)
        memset(e.bytes + 2 * block + 100, 0x02, 4096);
    expect_qemu_compare(name, fmt, &e);
    expect_our_read(name, fmt, &e);

    /* the image takes more writes, from us and from qemu */
    img = open_rw(name, fmt);
    ours_write(img, 3 * block + 7, 9, 0x03);
    memset(e.bytes + 3 * block + 7, 0x03, 9);
    img_close(img);
    tsh("qemu-io -f %s -c 'write -P 0x04 %llu 512' %s", fmt, (unsigned long long)block, name);
    memset(e.bytes + block, 0x04, 512);
    expect_qemu_compare(name, fmt, &e);
    expect_our_read(name, fmt, &e);
    free(e.bytes);
}

Test(vdi_vhd_crash, vdi_after_each_step)
{
    for (int step = 1; step <= 3; step++) {
        crash_case("vdi", "vdi", MIB, step);
        char name[16];
        snprintf(name, sizeof(name), "k%d.vdi", step);
        char *out = tcapture("qemu-img check -f vdi %s 2>&1; echo rc=$?", name);
        if (step == 2) {
            /* the leaked slot: qemu counts the header's mismatch as an error */
            cr_expect(strstr(out, "allocated blocks mismatch") && strstr(out, "rc=2"),
                      "step 2: %s", out);
            cr_expect_null(strstr(out, "also used by"), "step 2: %s", out);
            cr_expect_null(strstr(out, "too large"), "step 2: %s", out);
        } else {
            cr_expect(strstr(out, "No errors were found") && strstr(out, "rc=0"),
                      "step %d: %s", step, out);
        }
        free(out);
        struct img *img = open_rw(name, "vdi");
        struct img_check res = { 0 };
        cr_assert_eq(img->fmt->check(img, &res, 0), 0);
        cr_expect_eq(res.corruptions, 0, "step %d", step);
        cr_expect_eq(res.leaks, step == 2 ? 1 : 0, "step %d", step);
        img_close(img);
    }
}

/* The file must end in a valid footer after every step. */
static void expect_footer_at_the_end(const char *name)
{
    uint64_t len = file_size(name);
    uint8_t *f = slurp(name, len - 512, 512);
    cr_expect(memcmp(f, "conectix", 8) == 0, "%s: no footer at the end", name);
    uint32_t sum = 0;
    for (int i = 0; i < 512; i++)
        sum += (i >= 64 && i < 68) ? 0 : f[i];
    cr_expect_eq(~sum, get_be32(f + 64), "%s: bad footer checksum at the end", name);
    free(f);
}

Test(vdi_vhd_crash, vhd_after_each_step)
{
    for (int step = 1; step <= 3; step++) {
        crash_case("vpc", "vhd", 2 * MIB, step);
        char name[16];
        snprintf(name, sizeof(name), "k%d.vhd", step);
        expect_footer_at_the_end(name);
        tsh("qemu-img info -f vpc %s", name);
    }
}

Test(vdi_vhd_crash, vhd_footer_survives_before_the_write)
{
    /* killed after step 1: the footer sits at the new end already, and the
     * old one still where the block will go */
    ours_create("vpc", "s.vhd", 8 * MIB, NULL);
    write_and_die("s.vhd", "vpc", 1, 0, 0x05);
    expect_footer_at_the_end("s.vhd");
    cr_expect_eq(file_size("s.vhd"), 2048 + 512 + 2 * MIB + 512);
    uint8_t *old = slurp("s.vhd", 2048, 8);
    cr_expect(memcmp(old, "conectix", 8) == 0);
    free(old);
}
