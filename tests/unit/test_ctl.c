/* imgctl's pure helpers (core/parse, core/json) and the compare operation
 * (core/compare) on small raw images. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/compare.h"
#include "core/json.h"
#include "core/parse.h"

/* ---- sizes ---- */

static uint64_t size_of(const char *s)
{
    uint64_t v = 0;
    int r = img_parse_size(s, &v);
    cr_assert_eq(r, 0, "'%s' should parse, got %d", s, r);
    return v;
}

static void assert_size_error(const char *s, int err)
{
    uint64_t v = 12345;
    cr_assert_eq(img_parse_size(s, &v), err, "'%s' should fail with %d", s, err);
    cr_assert_eq(v, 12345, "'%s' must leave the output alone", s);
}

Test(ctl, size_plain_and_suffixes)
{
    cr_assert_eq(size_of("0"), 0);
    cr_assert_eq(size_of("4096"), 4096);
    cr_assert_eq(size_of("2b"), 2);
    cr_assert_eq(size_of("2B"), 2);
    cr_assert_eq(size_of("64k"), 65536);
    cr_assert_eq(size_of("64K"), 65536);
    cr_assert_eq(size_of("512M"), 512ull << 20);
    cr_assert_eq(size_of("10G"), 10ull << 30);
    cr_assert_eq(size_of("10g"), 10ull << 30);
    cr_assert_eq(size_of("2T"), 2ull << 40);
    cr_assert_eq(size_of("3P"), 3ull << 50);
    cr_assert_eq(size_of("7E"), 7ull << 60);
}

Test(ctl, size_fractions)
{
    cr_assert_eq(size_of("1.5G"), 3ull << 29);
    cr_assert_eq(size_of("0.5k"), 512);
    cr_assert_eq(size_of("1.25M"), 1310720);
    cr_assert_eq(size_of("1.0"), 1, "a zero fraction needs no unit");
    assert_size_error("1.5", -EINVAL);      /* a fraction of a byte */
    assert_size_error("1.", -EINVAL);
    assert_size_error(".5G", -EINVAL);
}

Test(ctl, size_rejects_junk)
{
    assert_size_error("", -EINVAL);
    assert_size_error("abc", -EINVAL);
    assert_size_error("12x", -EINVAL);
    assert_size_error("10GB", -EINVAL);
    assert_size_error("-1", -EINVAL);
    assert_size_error("+1", -EINVAL);
    assert_size_error(" 1", -EINVAL);
    assert_size_error("1 ", -EINVAL);
    assert_size_error("1G2", -EINVAL);
}

Test(ctl, size_limits)
{
    cr_assert_eq(size_of("9223372036854775807"), INT64_MAX);
    assert_size_error("9223372036854775808", -ERANGE);
    assert_size_error("8E", -ERANGE);
    assert_size_error("16E", -ERANGE);
    assert_size_error("18446744073709551616", -ERANGE);
    assert_size_error("99999999999999999999999G", -ERANGE);
}

Test(ctl, size_delta)
{
    struct img_size_delta d;
    cr_assert_eq(img_parse_size_delta("+1G", &d), 0);
    cr_assert_eq(d.mode, IMG_SIZE_GROW);
    cr_assert_eq(d.bytes, 1ull << 30);
    cr_assert_eq(img_parse_size_delta("-512M", &d), 0);
    cr_assert_eq(d.mode, IMG_SIZE_SHRINK);
    cr_assert_eq(d.bytes, 512ull << 20);
    cr_assert_eq(img_parse_size_delta("10G", &d), 0);
    cr_assert_eq(d.mode, IMG_SIZE_ABSOLUTE);
    cr_assert_eq(img_parse_size_delta("+-1G", &d), -EINVAL);
    cr_assert_eq(img_parse_size_delta("+", &d), -EINVAL);
}

/* ---- option lists ---- */

struct collected {
    int n;
    char keys[8][32], values[8][64];
};

static int collect(const char *key, const char *value, void *ctx)
{
    struct collected *c = ctx;
    cr_assert_lt(c->n, 8);
    snprintf(c->keys[c->n], sizeof(c->keys[0]), "%s", key);
    snprintf(c->values[c->n], sizeof(c->values[0]), "%s", value);
    c->n++;
    return 0;
}

static struct collected split(const char *list, int expect)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", list);
    struct collected c = { 0 };
    cr_assert_eq(img_split_options(buf, collect, &c), expect, "list '%s'", list);
    return c;
}

Test(ctl, options_split)
{
    struct collected c = split("cluster_size=64k,compat=1.1", 0);
    cr_assert_eq(c.n, 2);
    cr_assert_str_eq(c.keys[0], "cluster_size");
    cr_assert_str_eq(c.values[0], "64k");
    cr_assert_str_eq(c.keys[1], "compat");
    cr_assert_str_eq(c.values[1], "1.1");
}

Test(ctl, options_comma_escape)
{
    struct collected c = split("backing_file=a,,b.qcow2,backing_fmt=qcow2", 0);
    cr_assert_eq(c.n, 2);
    cr_assert_str_eq(c.values[0], "a,b.qcow2");
    cr_assert_str_eq(c.values[1], "qcow2");
    c = split("data_file=x,,,,y", 0);
    cr_assert_eq(c.n, 1);
    cr_assert_str_eq(c.values[0], "x,,y");
}

Test(ctl, options_bare_key_and_empty_value)
{
    struct collected c = split("lazy_refcounts,help,compat=", 0);
    cr_assert_eq(c.n, 3);
    cr_assert_str_eq(c.values[0], "on");
    cr_assert_str_eq(c.keys[1], "help");
    cr_assert_str_eq(c.values[2], "");
    c = split("a=1=2", 0);
    cr_assert_str_eq(c.keys[0], "a");
    cr_assert_str_eq(c.values[0], "1=2");
}

Test(ctl, options_empty_key_refused)
{
    split("=x", -EINVAL);
    split("a=1,,,=2", -EINVAL);   /* "1," then an item with no key */
    split("a=1,,b=2,", -EINVAL);
    split("", -EINVAL);
}

Test(ctl, parse_bool)
{
    bool b = false;
    cr_assert_eq(img_parse_bool("on", &b), 0);
    cr_assert(b);
    cr_assert_eq(img_parse_bool("OFF", &b), 0);
    cr_assert(!b);
    cr_assert_eq(img_parse_bool("yes", &b), 0);
    cr_assert(b);
    cr_assert_eq(img_parse_bool("maybe", &b), -EINVAL);
}

/* ---- JSON ---- */

static char *json_of(const char *s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    img_json_string(f, s);
    fclose(f);
    return buf;
}

static void assert_json(const char *in, const char *want)
{
    char *got = json_of(in);
    cr_assert_str_eq(got, want);
    free(got);
}

Test(ctl, json_escapes)
{
    assert_json("plain.qcow2", "\"plain.qcow2\"");
    assert_json("a\"b\\c", "\"a\\\"b\\\\c\"");
    assert_json("t\tn\nr\rb\bf\f", "\"t\\tn\\nr\\rb\\bf\\f\"");
    assert_json("\x01\x1f\x7f", "\"\\u0001\\u001F\\u007F\"");
    assert_json("dir/x y", "\"dir/x y\"");
    assert_json("", "\"\"");
}

Test(ctl, json_non_ascii)
{
    assert_json("caf\xc3\xa9", "\"caf\\u00E9\"");
    assert_json("\xe2\x82\xac", "\"\\u20AC\"");
    assert_json("\xf0\x9f\x98\x80", "\"\\uD83D\\uDE00\"");
    assert_json("bad\xff!", "\"bad\\uFFFD!\"");
    assert_json("\xc0\xaf", "\"\\uFFFD\\uFFFD\"");   /* overlong '/' */
    assert_json("cut\xe2\x82", "\"cut\\uFFFD\\uFFFD\"");
}

/* ---- compare ---- */

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/imgfs-ctl-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

/* A sparse raw file of `size` bytes with `n` bytes of `byte` at `at`. */
static struct img *raw_image(const char *name, uint64_t size, uint64_t at, size_t n, int byte)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, (off_t)size), 0);
    if (n) {
        char *buf = malloc(n);
        memset(buf, byte, n);
        cr_assert_eq(pwrite(fd, buf, n, (off_t)at), (ssize_t)n);
        free(buf);
    }
    close(fd);
    struct img_open_opts o = { .format = "raw", .force_share = true };
    struct img *img;
    char err[256];
    cr_assert_eq(img_open(path, &o, &img, err, sizeof(err)), 0, "%s", err);
    return img;
}

static struct img_compare_result compare(struct img *a, struct img *b, bool strict)
{
    struct img_compare_opts o = { .strict = strict };
    struct img_compare_result res;
    cr_assert_eq(img_compare(a, b, &o, &res), 0);
    img_close(a);
    img_close(b);
    return res;
}

Test(ctl, compare_identical_and_data_vs_hole, .init = make_tmpdir, .fini = remove_tmpdir)
{
    struct img_compare_result r = compare(raw_image("a", 1 << 20, 0, 0, 0),
                                          raw_image("b", 1 << 20, 4096, 4096, 0), false);
    cr_assert_eq(r.verdict, IMG_COMPARE_IDENTICAL, "written zeros equal a hole");
    r = compare(raw_image("a", 1 << 20, 70000, 10, 'x'), raw_image("b", 1 << 20, 70000, 10, 'x'),
                false);
    cr_assert_eq(r.verdict, IMG_COMPARE_IDENTICAL);
}

Test(ctl, compare_mismatch_offset_is_the_sector, .init = make_tmpdir, .fini = remove_tmpdir)
{
    struct img_compare_result r = compare(raw_image("a", 1 << 20, 70000, 10, 'x'),
                                          raw_image("b", 1 << 20, 70000, 10, 'y'), false);
    cr_assert_eq(r.verdict, IMG_COMPARE_CONTENT);
    cr_assert_eq(r.offset, 70000 / 512 * 512);
    r = compare(raw_image("a", 1 << 20, 0, 0, 0), raw_image("b", 1 << 20, 600000, 1, 'y'), false);
    cr_assert_eq(r.verdict, IMG_COMPARE_CONTENT);
    cr_assert_eq(r.offset, 600000 / 512 * 512);
}

Test(ctl, compare_sizes_differ, .init = make_tmpdir, .fini = remove_tmpdir)
{
    struct img_compare_result r = compare(raw_image("a", 1 << 20, 0, 0, 0),
                                          raw_image("b", 2 << 20, 0, 0, 0), false);
    cr_assert_eq(r.verdict, IMG_COMPARE_IDENTICAL);
    cr_assert(r.size_mismatch);
    r = compare(raw_image("a", 2 << 20, 1600000, 1, 'z'), raw_image("b", 1 << 20, 0, 0, 0),
                false);
    cr_assert_eq(r.verdict, IMG_COMPARE_CONTENT, "data past the smaller end differs");
    cr_assert_eq(r.offset, 1600000 / 512 * 512);
    r = compare(raw_image("a", 1 << 20, 0, 0, 0), raw_image("b", 2 << 20, 0, 0, 0), true);
    cr_assert_eq(r.verdict, IMG_COMPARE_SIZE);
}
