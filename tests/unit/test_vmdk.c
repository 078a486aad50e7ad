/* formats/vmdk: descriptor parser, sparse header validation, and reads of
 * disks made by qemu-img/qemu-io (every subformat, zeroed grains, a delta
 * chain) and of real images from ../shared/testdata/real, compared byte for
 * byte with `qemu-img convert -O raw` / the manifest's sha256, and range for
 * range with `qemu-img map --output=json`. */
#include <criterion/criterion.h>
#include <errno.h>
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
#include "formats/vmdk/vmdk.h"

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

/* ---- helpers: scratch folder, shell, files ---- */

static char dir[PATH_MAX];

static void make_dir(void)
{
    snprintf(dir, sizeof(dir), "/tmp/imgfs-vmdk-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* One suite, so that a filter of vmdk/STAR runs them all; test names start
 * with desc_, header_, read_ and real_. */
TestSuite(vmdk, .init = make_dir, .fini = remove_dir);

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char body[4096], cmd[8192 + PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "cd '%s' && (%s) >/dev/null 2>&1", dir, body);
    int rc = system(cmd);
    cr_assert_eq(rc, 0, "command failed (%d): %s", rc, body);
}

static const char *in_dir(const char *name)
{
    static char paths[4][2 * PATH_MAX];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof(paths[0]), "%s/%s", dir, name);
    return p;
}

static void write_text(const char *name, const char *text)
{
    FILE *f = fopen(in_dir(name), "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void patch(const char *name, uint64_t off, const void *bytes, size_t len)
{
    int fd = open(in_dir(name), O_WRONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pwrite(fd, bytes, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static void patch_le32(const char *name, uint64_t off, uint32_t v)
{
    uint8_t b[4];
    put_le32(b, v);
    patch(name, off, b, 4);
}

static void patch_le64(const char *name, uint64_t off, uint64_t v)
{
    uint8_t b[8];
    put_le64(b, v);
    patch(name, off, b, 8);
}

static uint32_t peek_le32(const char *name, uint64_t off)
{
    uint8_t b[4] = { 0 };
    int fd = open(in_dir(name), O_RDONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(pread(fd, b, 4, (off_t)off), 4);
    close(fd);
    return get_le32(b);
}

static int open_path(const char *path, struct img **out, char *err, size_t errlen)
{
    struct img_open_opts o = { .format = NULL };
    return img_open(path, &o, out, err, errlen);
}

static struct img *must_open(const char *path)
{
    struct img *img;
    char err[IMG_ERRMSG_MAX];
    int r = open_path(path, &img, err, sizeof(err));
    cr_assert_eq(r, 0, "open %s: %s", path, err);
    cr_assert_str_eq(img->fmt->name, "vmdk");
    return img;
}

/* Opening must fail with errno `want` (0: any) and a message holding `text`. */
static void expect_refused(const char *path, int want, const char *text)
{
    struct img *img = NULL;
    char err[IMG_ERRMSG_MAX] = "";
    int r = open_path(path, &img, err, sizeof(err));
    cr_assert_lt(r, 0, "%s opened, should be refused (%s)", path, text);
    cr_assert_null(img);
    if (want)
        cr_assert_eq(r, -want, "%s: got %d (%s), want %d", path, r, err, -want);
    cr_assert_not_null(strstr(err, text), "%s: message '%s' lacks '%s'", path, err, text);
    cr_assert_null(strchr(err, '\n'), "message must be one line: %s", err);
}

/* ---- descriptor parser ---- */

static int parse(const char *text, bool want_extents, struct vmdk_desc *d, char *err)
{
    return vmdk_desc_parse(text, strlen(text), want_extents, d, err, IMG_ERRMSG_MAX);
}

Test(vmdk, desc_good_lines)
{
    static const char text[] =
        "# Disk DescriptorFile\r\n"
        "version=1\n"
        "CID=0a1B2c3D\n"
        "parentCID = ffffffff\n"
        "createType=\"twoGbMaxExtentSparse\"\n"
        "parentFileNameHint=\"my parent.vmdk\"\n"
        "\n# Extent description\n"
        "RW 4192256 SPARSE \"disk with spaces-s001.vmdk\"\n"
        "  RDONLY 2048 FLAT \"sub dir/flat.bin\" 63  \r\n"
        "NOACCESS 100 ZERO\n"
        "RW 20480 VMFS \"disk-flat.vmdk\"\n"
        "RW 8 VMFSSPARSE \"delta.vmdk\"\n"
        "ddb.geometry.heads = \"16\"\n";
    struct vmdk_desc d;
    char err[IMG_ERRMSG_MAX] = "";
    cr_assert_eq(parse(text, true, &d, err), 0, "%s", err);
    cr_assert_str_eq(d.create_type, "twoGbMaxExtentSparse");
    cr_assert(d.has_cid && d.has_parent_cid);
    cr_assert_eq(d.cid, 0x0a1b2c3du);
    cr_assert_eq(d.parent_cid, 0xffffffffu);
    cr_assert_str_eq(d.parent_hint, "my parent.vmdk");
    cr_assert_eq(d.n_extents, 5);
    cr_assert_eq(d.extents[0].type, VMDK_EXT_SPARSE);
    cr_assert_eq(d.extents[0].sectors, 4192256);
    cr_assert_str_eq(d.extents[0].file, "disk with spaces-s001.vmdk");
    cr_assert_eq(d.extents[1].access, VMDK_RDONLY);
    cr_assert_eq(d.extents[1].type, VMDK_EXT_FLAT);
    cr_assert_eq(d.extents[1].flat_offset, 63);
    cr_assert_str_eq(d.extents[1].file, "sub dir/flat.bin");
    cr_assert_eq(d.extents[2].access, VMDK_NOACCESS);
    cr_assert_eq(d.extents[2].type, VMDK_EXT_ZERO);
    cr_assert_null(d.extents[2].file);
    cr_assert_eq(d.extents[3].type, VMDK_EXT_FLAT);
    cr_assert_eq(d.extents[3].flat_offset, 0);
    cr_assert_eq(d.extents[4].type, VMDK_EXT_SPARSE);
    vmdk_desc_free(&d);

    /* The descriptor inside a monolithic sparse file: extents skipped. */
    cr_assert_eq(parse(text, false, &d, err), 0, "%s", err);
    cr_assert_eq(d.n_extents, 0);
    vmdk_desc_free(&d);
}

static void expect_bad(const char *text, int want, const char *msg)
{
    struct vmdk_desc d;
    char err[IMG_ERRMSG_MAX] = "";
    int r = parse(text, true, &d, err);
    vmdk_desc_free(&d);
    cr_assert_eq(r, -want, "'%s': got %d (%s)", text, r, err);
    cr_assert_not_null(strstr(err, msg), "'%s': message '%s' lacks '%s'", text, err, msg);
}

Test(vmdk, desc_bad_lines)
{
    expect_bad("RW 0 FLAT \"a\" 0\n", EINVAL, "absurd");
    expect_bad("RW 99999999999999999999999 FLAT \"a\" 0\n", EINVAL, "bad extent size");
    expect_bad("RW 72057594037927936 SPARSE \"a\"\n", EINVAL, "absurd");
    expect_bad("RW -5 FLAT \"a\" 0\n", EINVAL, "bad extent size");
    expect_bad("RW 100 FLAT \"a\"\n", EINVAL, "invalid extent line");
    /* QEMU rejects a VMFS line with an offset (bwlehrpool/image_t4.vmdk) */
    expect_bad("RW 20480 VMFS \"image_t4-flat.vmdk\" 0\n", EINVAL, "invalid extent line");
    expect_bad("RW 100 SPARSE \"a\" 7\n", EINVAL, "invalid extent line");
    expect_bad("RW 100 SPARSE \"unterminated\n", EINVAL, "no closing quote");
    expect_bad("RW 100 SPARSE unquoted.vmdk\n", EINVAL, "double quotes");
    expect_bad("RW 100 SPARSE \"\"\n", EINVAL, "empty");
    expect_bad("RW 100 FLAT \"a\" 0 junk\n", EINVAL, "invalid extent line");
    expect_bad("RW 100 SESPARSE \"a\"\n", ENOTSUP, "not supported");
    expect_bad("RW 100 WEIRD \"a\"\n", ENOTSUP, "unknown");
    expect_bad("RW 100 ZERO \"a\"\n", EINVAL, "takes no file");
    expect_bad("CID=xyz\n", EINVAL, "not a CID");
    expect_bad("CID=123456789\n", EINVAL, "not a CID");
}

Test(vmdk, desc_long_name_refused)
{
    size_t n = VMDK_MAX_NAME + 100;
    char *text = malloc(n + 64);
    int k = sprintf(text, "RW 100 SPARSE \"");
    memset(text + k, 'a', n);
    strcpy(text + k + n, "\"\n");
    expect_bad(text, EINVAL, "too long");
    free(text);
}

Test(vmdk, desc_too_many_extents)
{
    size_t n = VMDK_MAX_EXTENTS + 1;
    char *text = malloc(n * 32 + 1), *p = text;
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "RW 1 ZERO\n");
    expect_bad(text, EFBIG, "more than");
    free(text);
}

Test(vmdk, desc_text_stops_at_nul)
{
    static const char text[] = "createType=\"monolithicFlat\"\nRW 8 ZERO\n\0RW 8 WEIRD \"x\"\n";
    struct vmdk_desc d;
    char err[IMG_ERRMSG_MAX];
    cr_assert_eq(vmdk_desc_parse(text, sizeof(text), true, &d, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(d.n_extents, 1);
    vmdk_desc_free(&d);
}

static int probe_text(const char *t)
{
    const struct img_format *f = img_format_by_name("vmdk");
    cr_assert_not_null(f);
    return f->probe((const uint8_t *)t, strlen(t), "x");
}

Test(vmdk, desc_probe)
{
    cr_assert_eq(probe_text("# Disk DescriptorFile\nversion=1\n"), 100);
    cr_assert_eq(probe_text("# comment\n\nversion=1\nCID=fffffffe\n"), 100);
    cr_assert_eq(probe_text("version=3\r\n"), 100);
    cr_assert_eq(probe_text("# made by hand\n  createType = \"monolithicFlat\"\n"), 100);
    cr_assert_eq(probe_text("KDMV\x01"), 100);
    /* Not descriptors: prose, C source quoting the key, other configs, binary */
    cr_assert_eq(probe_text("hello world\nversion=1 of this readme\n"), 0);
    cr_assert_eq(probe_text("int x; printf(\"createType=\\\"%s\\\"\");\n"), 0);
    cr_assert_eq(probe_text(".encoding = \"UTF-8\"\nconfig.version = \"8\"\n"), 0);
    cr_assert_eq(probe_text("version=1\n\x01\x02garbage"), 0);
    cr_assert_eq(probe_text("QFI\xfb"), 0);
}

/* ---- sparse header validation (images from qemu-img, then damaged) ---- */

static void make_sparse(const char *name, const char *size)
{
    sh("qemu-img create -q -f vmdk -o subformat=monolithicSparse %s %s", name, size);
}

Test(vmdk, header_valid_image_opens)
{
    make_sparse("d.vmdk", "8M");
    struct img *img = must_open(in_dir("d.vmdk"));
    cr_assert_eq(img->size, 8 * MiB);
    cr_assert_eq(img->cluster_size, 65536);
    cr_assert_null(img->backing_file);
    img_close(img);
}

Test(vmdk, header_bad_fields_refused)
{
    static const struct {
        uint64_t off;
        unsigned width;
        uint64_t value;
        int err;
        const char *msg;
    } cases[] = {
        { 4, 4, 4, ENOTSUP, "version 4" },
        { 4, 4, 0, ENOTSUP, "version 0" },
        { 20, 8, 0, EINVAL, "grain size of 0" },
        { 20, 8, 1u << 20, EINVAL, "grain size of 1048576" },
        { 20, 8, 96, EINVAL, "not a power of two" },
        { 44, 4, 0, EINVAL, "0 entries per grain table" },
        { 44, 4, 100000, EINVAL, "100000 entries per grain table" },
        { 12, 8, UINT64_C(1) << 62, EINVAL, "capacity" },
        { 56, 8, UINT64_C(1) << 40, EINVAL, "grain directory at sector" },
        { 64, 8, UINT64_C(1) << 40, EINVAL, "file truncated" },
        { 77, 2, 7, ENOTSUP, "compression algorithm 7" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        make_sparse("d.vmdk", "8M");
        if (cases[i].width == 4)
            patch_le32("d.vmdk", cases[i].off, (uint32_t)cases[i].value);
        else if (cases[i].width == 8)
            patch_le64("d.vmdk", cases[i].off, cases[i].value);
        else {
            uint8_t b[2] = { (uint8_t)cases[i].value, 0 };
            patch("d.vmdk", cases[i].off, b, 2);
        }
        expect_refused(in_dir("d.vmdk"), cases[i].err, cases[i].msg);
    }
}

Test(vmdk, header_damaged_newline_check)
{
    make_sparse("d.vmdk", "8M");
    patch("d.vmdk", 75, "\n", 1);   /* "\r\n" -> "\n\n", as a text-mode copy would */
    expect_refused(in_dir("d.vmdk"), EINVAL, "newline check bytes");
}

Test(vmdk, header_grain_table_past_eof)
{
    make_sparse("d.vmdk", "8M");
    uint32_t gd = peek_le32("d.vmdk", 56);
    patch_le32("d.vmdk", (uint64_t)gd * 512, 0x7fffff00);
    expect_refused(in_dir("d.vmdk"), EINVAL, "grain table 0 at sector 2147483392");
}

Test(vmdk, header_grain_entry_past_eof)
{
    make_sparse("d.vmdk", "8M");
    sh("qemu-io -f vmdk -c 'write -P 0x5a 0 64k' d.vmdk");
    uint32_t gd = peek_le32("d.vmdk", 56);
    uint32_t gt = peek_le32("d.vmdk", (uint64_t)gd * 512);
    patch_le32("d.vmdk", (uint64_t)gt * 512, 0x00ffffff);
    struct img *img = must_open(in_dir("d.vmdk"));   /* tables load lazily */
    uint8_t buf[512];
    cr_assert_eq(img_read(img, buf, sizeof(buf), 0), -EIO);
    cr_assert_not_null(strstr(img->errmsg, "past the end"), "%s", img->errmsg);
    struct img_extent e;
    cr_assert_eq(img_map(img, 0, img->size, &e), -EIO);
    img_close(img);
}

Test(vmdk, header_extent_of_multifile_disk_alone)
{
    sh("qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse d.vmdk 8M");
    expect_refused(in_dir("d-s001.vmdk"), EINVAL, "no embedded descriptor");
}

Test(vmdk, header_extent_with_bad_magic)
{
    sh("qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse d.vmdk 8M");
    patch("d-s001.vmdk", 0, "XXXX", 4);
    expect_refused(in_dir("d.vmdk"), EINVAL, "no KDMV magic");
}

Test(vmdk, header_descriptor_faults)
{
    write_text("nocreate.vmdk", "# Disk DescriptorFile\nversion=1\nRW 8 ZERO\n");
    expect_refused(in_dir("nocreate.vmdk"), EINVAL, "no createType");
    write_text("odd.vmdk", "# Disk DescriptorFile\ncreateType=\"fullDevice\"\nRW 8 ZERO\n");
    expect_refused(in_dir("odd.vmdk"), ENOTSUP, "createType 'fullDevice'");
    write_text("none.vmdk", "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n");
    expect_refused(in_dir("none.vmdk"), EINVAL, "no extents");
    write_text("missing.vmdk", "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n"
                               "RW 8 FLAT \"gone-flat.vmdk\" 0\n");
    expect_refused(in_dir("missing.vmdk"), ENOENT, "gone-flat.vmdk");
    write_text("line.vmdk", "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n"
                            "RW 8 FLAT \"x\"\n");
    expect_refused(in_dir("line.vmdk"), EINVAL, "line 3: invalid extent line");
}

Test(vmdk, header_extent_outside_folder)
{
    sh("mkdir inner && head -c 4096 /dev/zero > outside-flat.vmdk");
    write_text("inner/d.vmdk", "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n"
                               "RW 8 FLAT \"../outside-flat.vmdk\" 0\n");
    expect_refused(in_dir("inner/d.vmdk"), EPERM, "outside");
    write_text("inner/abs.vmdk", "# Disk DescriptorFile\ncreateType=\"monolithicFlat\"\n"
                                 "RW 1 FLAT \"/etc/hostname\" 0\n");
    expect_refused(in_dir("inner/abs.vmdk"), EPERM, "outside");
}

Test(vmdk, header_zero_and_flat_extents_add_up)
{
    sh("head -c 1048576 /dev/urandom > data.bin");
    write_text("d.vmdk", "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n"
                         "RW 100 ZERO\n"
                         "RDONLY 1024 FLAT \"data.bin\" 1024\n"
                         "RW 2048 FLAT \"data.bin\" 0\n");
    struct img *img = must_open(in_dir("d.vmdk"));
    cr_assert_eq(img->size, (100 + 1024 + 2048) * 512);
    cr_assert_eq(img->n_companions, 1);   /* data.bin named twice, opened once */
    uint8_t *got = malloc(img->size), *want = calloc(1, img->size);
    size_t n;
    FILE *f = fopen(in_dir("data.bin"), "rb");
    cr_assert_not_null(f);
    n = fread(want + 100 * 512 + 1024 * 512, 1, MiB, f);
    cr_assert_eq(n, MiB);
    memcpy(want + 100 * 512, want + 100 * 512 + 1024 * 512 + 512 * 1024, 512 * 1024);
    fclose(f);
    cr_assert_eq(img_read(img, got, img->size, 0), 0, "%s", img->errmsg);
    cr_assert_eq(memcmp(got, want, img->size), 0);
    /* The second FLAT extent is 1 MiB but the file is too: it is all there;
     * the first reads its second half.  Now the map: */
    struct img_extent e;
    cr_assert_eq(img_map(img, 0, img->size, &e), 0);
    cr_assert_eq(e.kind, IMG_ZERO);
    cr_assert_eq(e.len, 100 * 512);
    img_close(img);
    free(got);
    free(want);
}

/* ---- qemu as the oracle ---- */

struct range {
    uint64_t start, len;
};

struct ranges {
    struct range *r;
    size_t n;
};

static void add_range(struct ranges *rs, uint64_t start, uint64_t len)
{
    if (rs->n && rs->r[rs->n - 1].start + rs->r[rs->n - 1].len == start) {
        rs->r[rs->n - 1].len += len;
        return;
    }
    rs->r = realloc(rs->r, (rs->n + 1) * sizeof(*rs->r));
    cr_assert_not_null(rs->r);
    rs->r[rs->n++] = (struct range){ start, len };
}

static uint64_t json_u64(const char *obj, const char *key)
{
    const char *p = strstr(obj, key);
    cr_assert_not_null(p, "no %s in %s", key, obj);
    return strtoull(p + strlen(key), NULL, 10);
}

static bool json_true(const char *obj, const char *key)
{
    const char *p = strstr(obj, key);
    cr_assert_not_null(p, "no %s in %.80s", key, obj);
    p += strlen(key);
    while (*p == ' ')
        p++;
    return strncmp(p, "true", 4) == 0;
}

/* Merged ranges of `qemu-img map --output=json` that are "data": true.
 * With data_not_zero, ranges that qemu calls data+zero are left out: that
 * is how QEMU reports the holes of a flat extent, which we call ZERO. */
static struct ranges qemu_data_ranges(const char *map_json_path, bool data_not_zero)
{
    FILE *f = fopen(map_json_path, "r");
    cr_assert_not_null(f, "%s", map_json_path);
    struct ranges rs = { 0 };
    char line[1024];
    while (fgets(line, sizeof(line), f)) {
        if (!strstr(line, "\"start\""))
            continue;
        bool data = json_true(line, "\"data\":");
        bool zero = json_true(line, "\"zero\":");
        if (data && !(data_not_zero && zero))
            add_range(&rs, json_u64(line, "\"start\":"), json_u64(line, "\"length\":"));
    }
    fclose(f);
    return rs;
}

static struct ranges our_data_ranges(struct img *img)
{
    struct ranges rs = { 0 };
    uint64_t off = 0;
    while (off < img->size) {
        struct img_extent e;
        int r = img_map(img, off, img->size - off, &e);
        cr_assert_eq(r, 0, "map at 0x%llx: %s", (unsigned long long)off, img->errmsg);
        cr_assert_eq(e.off, off);
        if (e.kind == IMG_DATA)
            add_range(&rs, off, e.len);
        off += e.len;
    }
    return rs;
}

static void compare_ranges(struct ranges ours, struct ranges theirs, const char *what)
{
    bool same = ours.n == theirs.n;
    for (size_t i = 0; same && i < ours.n; i++)
        same = ours.r[i].start == theirs.r[i].start && ours.r[i].len == theirs.r[i].len;
    if (!same) {
        for (size_t i = 0; i < ours.n || i < theirs.n; i++)
            fprintf(stderr, "%s: ours %llx+%llx qemu %llx+%llx\n", what,
                    i < ours.n ? (unsigned long long)ours.r[i].start : 0ULL,
                    i < ours.n ? (unsigned long long)ours.r[i].len : 0ULL,
                    i < theirs.n ? (unsigned long long)theirs.r[i].start : 0ULL,
                    i < theirs.n ? (unsigned long long)theirs.r[i].len : 0ULL);
    }
    free(ours.r);
    free(theirs.r);
    cr_assert(same, "%s: data ranges differ from qemu's", what);
}

static void compare_map_with_qemu(struct img *img, const char *name, bool data_not_zero)
{
    sh("qemu-img map -U --output=json %s > map.json", name);
    compare_ranges(our_data_ranges(img), qemu_data_ranges(in_dir("map.json"), data_not_zero),
                   name);
}

/* Bytes of [off, off+len) through img_read against qemu's raw output. */
static void compare_window(struct img *img, int raw_fd, uint64_t off, uint64_t len)
{
    uint8_t *ours = malloc(len), *theirs = calloc(1, len);
    cr_assert(ours && theirs);
    cr_assert_eq(img_read(img, ours, len, off), 0, "read 0x%llx: %s",
                 (unsigned long long)off, img->errmsg);
    ssize_t n = pread(raw_fd, theirs, len, (off_t)off);
    cr_assert_geq(n, 0);
    for (uint64_t i = 0; i < len; i++)
        if (ours[i] != theirs[i])
            cr_assert_fail("byte 0x%llx: ours %02x, qemu %02x", (unsigned long long)(off + i),
                           ours[i], theirs[i]);
    free(ours);
    free(theirs);
}

/* Every byte when windows is NULL, else only the given windows (big disks). */
static void compare_bytes_with_qemu(struct img *img, const char *name,
                                    const struct range *windows, size_t n_windows)
{
    sh("qemu-img convert -U -O raw %s out.raw", name);
    int fd = open(in_dir("out.raw"), O_RDONLY);
    cr_assert_geq(fd, 0);
    if (!windows) {
        for (uint64_t off = 0; off < img->size; off += 4 * MiB)
            compare_window(img, fd, off, img->size - off < 4 * MiB ? img->size - off : 4 * MiB);
    }
    for (size_t i = 0; i < n_windows; i++)
        compare_window(img, fd, windows[i].start, windows[i].len);
    close(fd);
    unlink(in_dir("out.raw"));
}

/* Scattered writes: unaligned, crossing grains and tables, at the end. */
static const char *const scattered_writes =
    "-c 'write -P 0x11 0 4k' -c 'write -P 0x22 100k 200k' -c 'write -P 0x33 1M 64k' "
    "-c 'write -P 0x44 1088k 64k' -c 'write -P 0x55 40M 1k' -c 'write -P 0x66 63M 1M' "
    "-c 'write -P 0x77 33M 5k'";

static void check_against_qemu(const char *name, bool data_not_zero)
{
    struct img *img = must_open(in_dir(name));
    compare_bytes_with_qemu(img, name, NULL, 0);
    compare_map_with_qemu(img, name, data_not_zero);
    img_close(img);
}

static void subformat_roundtrip(const char *subformat, bool flat)
{
    sh("qemu-img create -q -f vmdk -o subformat=%s d.vmdk 64M", subformat);
    sh("qemu-io -f vmdk %s d.vmdk", scattered_writes);
    check_against_qemu("d.vmdk", flat);
}

Test(vmdk, read_monolithic_sparse) { subformat_roundtrip("monolithicSparse", false); }
Test(vmdk, read_monolithic_flat) { subformat_roundtrip("monolithicFlat", true); }

static void big_split_roundtrip(const char *subformat, bool flat)
{
    /* > 4 GiB so that three extents of at most 2 GiB appear; bytes are
     * compared around each write and each extent boundary. */
    sh("qemu-img create -q -f vmdk -o subformat=%s d.vmdk 4200M", subformat);
    sh("qemu-io -f vmdk -c 'write -P 0x11 0 4k' -c 'write -P 0x22 2047M 2M' "
       "-c 'write -P 0x33 4095M 3M' -c 'write -P 0x44 4199M 1M' -c 'write -P 0x55 3G 100k' "
       "d.vmdk");
    struct img *img = must_open(in_dir("d.vmdk"));
    cr_assert_eq(img->size, 4200 * MiB);
    cr_assert_geq(img->n_companions, 3);
    static const struct range windows[] = {
        { 0, MiB }, { 2046 * MiB, 4 * MiB }, { 4094 * MiB, 5 * MiB },
        { 4198 * MiB, 2 * MiB }, { 3 * GiB - MiB, 2 * MiB }, { 1 * GiB, MiB },
    };
    compare_bytes_with_qemu(img, "d.vmdk", windows, sizeof(windows) / sizeof(windows[0]));
    compare_map_with_qemu(img, "d.vmdk", flat);
    img_close(img);
}

Test(vmdk, read_two_gb_max_extent_sparse, .timeout = 120)
{
    big_split_roundtrip("twoGbMaxExtentSparse", false);
}

Test(vmdk, read_two_gb_max_extent_flat, .timeout = 120)
{
    big_split_roundtrip("twoGbMaxExtentFlat", true);
}

Test(vmdk, read_stream_optimized)
{
    sh("qemu-img create -q -f raw src.raw 64M");
    sh("qemu-io -f raw %s -c 'write -P 0 2M 64k' src.raw", scattered_writes);
    sh("head -c 300000 /dev/urandom | dd of=src.raw bs=1 seek=10485760 conv=notrunc");
    sh("qemu-img convert -O vmdk -o subformat=streamOptimized src.raw d.vmdk");
    struct img *img = must_open(in_dir("d.vmdk"));
    struct img_extent e;
    cr_assert_eq(img_map(img, 0, img->size, &e), 0);
    cr_assert_eq(e.kind, IMG_DATA);
    cr_assert(e.compressed);
    cr_assert_eq(e.fd, -1);
    img_close(img);
    check_against_qemu("d.vmdk", false);
}

Test(vmdk, read_stream_optimized_corrupt_grain)
{
    sh("qemu-img create -q -f raw src.raw 4M");
    sh("qemu-io -f raw -c 'write -P 0x42 0 128k' src.raw");
    sh("qemu-img convert -O vmdk -o subformat=streamOptimized src.raw d.vmdk");
    struct img *img = must_open(in_dir("d.vmdk"));
    struct img_extent e;
    cr_assert_eq(img_map(img, 0, 64 * 1024, &e), 0);
    cr_assert(e.compressed);
    img_close(img);
    /* Find the first grain's marker through the tables: GD -> GT -> grain. */
    uint32_t gd = peek_le32("d.vmdk", 56);   /* qemu writes the GD offset up front */
    uint32_t gt = peek_le32("d.vmdk", (uint64_t)gd * 512);
    uint32_t grain = peek_le32("d.vmdk", (uint64_t)gt * 512);
    uint32_t size = peek_le32("d.vmdk", (uint64_t)grain * 512 + 8);
    uint8_t buf[4096];

    patch("d.vmdk", (uint64_t)grain * 512 + 12 + size / 2, "garbage!", 8);
    img = must_open(in_dir("d.vmdk"));
    cr_assert_eq(img_read(img, buf, sizeof(buf), 0), -EIO);
    cr_assert_not_null(strstr(img->errmsg, "compressed grain"), "%s", img->errmsg);
    img_close(img);

    patch_le32("d.vmdk", (uint64_t)grain * 512 + 8, 0x7fffffff);
    img = must_open(in_dir("d.vmdk"));
    cr_assert_eq(img_read(img, buf, sizeof(buf), 0), -EIO);
    cr_assert_not_null(strstr(img->errmsg, "out of bounds"), "%s", img->errmsg);
    img_close(img);
}

Test(vmdk, read_stream_optimized_bad_footer)
{
    sh("qemu-img create -q -f raw src.raw 4M");
    sh("qemu-img convert -O vmdk -o subformat=streamOptimized src.raw d.vmdk");
    /* qemu writes the tables' offsets in the header and no footer; send
     * the reader to the footer that is not there. */
    patch_le64("d.vmdk", 56, UINT64_MAX);
    expect_refused(in_dir("d.vmdk"), EINVAL, "no valid footer");
}

Test(vmdk, read_zeroed_grains)
{
    sh("qemu-img create -q -f vmdk -o subformat=monolithicSparse,zeroed_grain=on d.vmdk 64M");
    sh("qemu-io -f vmdk %s -c 'write -z 1M 128k' -c 'write -z 8M 1M' d.vmdk", scattered_writes);
    struct img *img = must_open(in_dir("d.vmdk"));
    struct img_extent e;
    cr_assert_eq(img_map(img, 8 * MiB, MiB, &e), 0);
    cr_assert_eq(e.kind, IMG_ZERO);
    cr_assert_eq(e.len, MiB);
    img_close(img);
    check_against_qemu("d.vmdk", false);
}

Test(vmdk, read_delta_chain)
{
    sh("qemu-img create -q -f vmdk base.vmdk 64M");
    sh("qemu-io -f vmdk %s base.vmdk", scattered_writes);
    sh("qemu-img create -q -f vmdk -b base.vmdk -F vmdk top.vmdk");
    sh("qemu-io -f vmdk -c 'write -P 0xa1 0 2k' -c 'write -P 0xa2 1050k 10k' "
       "-c 'write -P 0xa3 50M 64k' top.vmdk");
    struct img *img = must_open(in_dir("top.vmdk"));
    cr_assert_str_eq(img->backing_file, "base.vmdk");
    cr_assert_str_eq(img->backing_fmt, "vmdk");
    cr_assert_not_null(img->backing);
    img_close(img);
    check_against_qemu("top.vmdk", false);
}

/* A parent whose CID no longer matches the child's parentCID. */
Test(vmdk, read_delta_parent_cid_mismatch)
{
    sh("qemu-img create -q -f vmdk base.vmdk 4M");
    sh("qemu-img create -q -f vmdk -b base.vmdk -F vmdk top.vmdk");
    int fd = open(in_dir("base.vmdk"), O_RDWR);
    cr_assert_geq(fd, 0);
    char head[4096];
    cr_assert_eq(pread(fd, head, sizeof(head), 512), (ssize_t)sizeof(head));
    head[sizeof(head) - 1] = 0;
    char *cid = strstr(head, "\nCID=");
    cr_assert_not_null(cid);
    cid[5] = cid[5] == '0' ? '1' : '0';
    cr_assert_eq(pwrite(fd, cid + 5, 1, 512 + (cid + 5 - head)), 1);
    close(fd);
    struct img *img = must_open(in_dir("top.vmdk"));
    uint8_t buf[512];
    cr_assert_eq(img_read(img, buf, sizeof(buf), 0), -EIO);
    cr_assert_not_null(strstr(img->errmsg, "parentCID"), "%s", img->errmsg);
    img_close(img);
}

/* ---- real images: ../shared/testdata/real ---- */

/* Absolute, since the shell commands run inside the scratch folder. */
static const char *shared_dir(void)
{
    static char real[PATH_MAX];
    const char *s = getenv("SHARED_DIR");
    if (!s || !*s)
        s = "../shared";
    if (!realpath(s, real))
        snprintf(real, sizeof(real), "%s", s);
    return real;
}

static const char *real_path(const char *rel)
{
    static char p[2][2 * PATH_MAX];
    static int next;
    char *out = p[next++ % 2];
    snprintf(out, sizeof(p[0]), "%s/testdata/real/%s", shared_dir(), rel);
    return out;
}

struct manifest_row {
    char status[32];
    uint64_t vsize;
    char sha256_raw[80];
};

/* Columns: path, companions, compression, sha256_stored, sha256_image,
 * format, virtual_size, sha256_raw, info, map, status, ... */
static bool manifest_row(const char *rel, struct manifest_row *row)
{
    FILE *f = fopen(real_path("manifest.tsv"), "r");
    if (!f)
        return false;
    char line[8192];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f)) {
        char *cols[12] = { 0 };
        size_t n = 0;
        for (char *save = NULL, *t = strtok_r(line, "\t", &save); t && n < 12;
             t = strtok_r(NULL, "\t", &save))
            cols[n++] = t;
        if (n < 11 || strcmp(cols[0], rel) != 0)
            continue;
        snprintf(row->status, sizeof(row->status), "%s", cols[10]);
        row->vsize = strtoull(cols[6], NULL, 10);
        snprintf(row->sha256_raw, sizeof(row->sha256_raw), "%s", cols[7]);
        found = true;
    }
    fclose(f);
    return found;
}

static void sha256_of_disk(struct img *img, char hex[65])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    cr_assert(ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL));
    size_t chunk = 8 * MiB;
    uint8_t *buf = malloc(chunk);
    cr_assert_not_null(buf);
    for (uint64_t off = 0; off < img->size; off += chunk) {
        size_t n = img->size - off < chunk ? (size_t)(img->size - off) : chunk;
        cr_assert_eq(img_read(img, buf, n, off), 0, "read 0x%llx: %s",
                     (unsigned long long)off, img->errmsg);
        cr_assert(EVP_DigestUpdate(ctx, buf, n));
    }
    uint8_t md[32];
    unsigned len = 0;
    cr_assert(EVP_DigestFinal_ex(ctx, md, &len));
    for (unsigned i = 0; i < 32; i++)
        sprintf(hex + 2 * i, "%02x", md[i]);
    EVP_MD_CTX_free(ctx);
    free(buf);
}

/* Copy (or bunzip2) a stored image into the scratch folder. */
static const char *stage(const char *rel)
{
    const char *base = strrchr(rel, '/') + 1;
    size_t n = strlen(base);
    static char name[PATH_MAX];
    if (n > 4 && strcmp(base + n - 4, ".bz2") == 0) {
        snprintf(name, sizeof(name), "%.*s", (int)(n - 4), base);
        sh("bzip2 -dc '%s' > '%s'", real_path(rel), name);
    } else {
        snprintf(name, sizeof(name), "%s", base);
        sh("cp '%s' '%s'", real_path(rel), name);
    }
    return in_dir(name);
}

/* hash: compare every byte's sha256; map_json: compare qemu's stored map. */
static void check_real(const char *rel, bool hash)
{
    struct manifest_row row;
    if (!manifest_row(rel, &row))
        cr_skip_test("%s: no manifest (SHARED_DIR=%s)", rel, shared_dir());
    cr_assert_str_eq(row.status, "ok");
    const char *path = strstr(rel, ".bz2") ? stage(rel) : real_path(rel);
    struct img *img = must_open(path);
    cr_assert_eq(img->size, row.vsize, "%s: size %llu, manifest %llu", rel,
                 (unsigned long long)img->size, (unsigned long long)row.vsize);
    if (hash) {
        char hex[65];
        sha256_of_disk(img, hex);
        cr_assert_str_eq(hex, row.sha256_raw, "%s: content differs from qemu's", rel);
    }
    char map_rel[PATH_MAX];
    snprintf(map_rel, sizeof(map_rel), "%.*s.map.json",
             (int)(strlen(rel) - (strstr(rel, ".bz2") ? 4 : 0)), rel);
    compare_ranges(our_data_ranges(img), qemu_data_ranges(real_path(map_rel), false), rel);
    img_close(img);
}

Test(vmdk, real_dfvfs_ext2) { check_real("dfvfs/ext2.vmdk", true); }
Test(vmdk, real_bwlehrpool_t0) { check_real("bwlehrpool/image_t0.vmdk", true); }
Test(vmdk, real_bwlehrpool_t1_two_files) { check_real("bwlehrpool/image_t1.vmdk", true); }
Test(vmdk, real_bwlehrpool_default, .timeout = 120)
{
    check_real("bwlehrpool/image-default.vmdk", true);
}
Test(vmdk, real_cot_input, .timeout = 120) { check_real("cot/input.vmdk", true); }
Test(vmdk, real_cot_blank, .timeout = 120) { check_real("cot/blank.vmdk", true); }
Test(vmdk, real_qemu_version3_2013, .timeout = 120)
{
    check_real("qemu/iotest-version3.v2013.vmdk.bz2", true);
}
/* 16 GiB: the map only. */
Test(vmdk, real_qemu_version3, .timeout = 120) { check_real("qemu/iotest-version3.vmdk.bz2", false); }

static void check_rejected(const char *rel, const char *msg)
{
    struct manifest_row row;
    if (!manifest_row(rel, &row))
        cr_skip_test("%s: no manifest (SHARED_DIR=%s)", rel, shared_dir());
    cr_assert_str_eq(row.status, "rejected");
    const char *path = strstr(rel, ".bz2") ? stage(rel) : real_path(rel);
    expect_refused(path, 0, msg);
}

Test(vmdk, real_afl9_rejected) { check_rejected("qemu/afl9.vmdk.bz2", "afl9.vmdk"); }
Test(vmdk, real_missing_flat_extent_rejected)
{
    check_rejected("bwlehrpool/image_t2.vmdk", "cannot open extent 'image_t2-flat.vmdk'");
}
Test(vmdk, real_vmfs_line_with_offset_rejected)
{
    check_rejected("bwlehrpool/image_t4.vmdk", "invalid extent line: RW 20480 VMFS");
}

/* ---- damaged images: any answer but a crash, a hang or a leak ---- */

static void read_everything(const char *path)
{
    struct img *img;
    char err[IMG_ERRMSG_MAX];
    if (open_path(path, &img, err, sizeof(err)) < 0)
        return;
    uint8_t *buf = malloc(MiB);
    cr_assert_not_null(buf);
    for (uint64_t off = 0; off < img->size && off < 64 * MiB; off += MiB) {
        size_t n = img->size - off < MiB ? (size_t)(img->size - off) : MiB;
        if (img_read(img, buf, n, off) < 0)
            break;
    }
    struct img_extent e;
    for (uint64_t off = 0; off < img->size; off += e.len)
        if (img_map(img, off, img->size - off, &e) < 0)
            break;
    free(buf);
    img_close(img);
}

static void flip_bytes_and_read(const char *name, unsigned rounds, uint32_t seed)
{
    struct stat st;
    cr_assert_eq(stat(in_dir(name), &st), 0);
    uint64_t span = (uint64_t)st.st_size < 96 * 1024 ? (uint64_t)st.st_size : 96 * 1024;
    for (unsigned i = 0; i < rounds; i++) {
        sh("cp %s fuzz.vmdk", name);
        for (int k = 0; k < 4; k++) {
            seed = seed * 1103515245u + 12345u;
            uint64_t off = (seed >> 8) % span;
            uint8_t b = (uint8_t)(seed >> 24);
            patch("fuzz.vmdk", off, &b, 1);
        }
        read_everything(in_dir("fuzz.vmdk"));
    }
}

Test(vmdk, header_damaged_sparse_never_crashes, .timeout = 300)
{
    make_sparse("d.vmdk", "8M");
    sh("qemu-io -f vmdk -c 'write -P 0x11 0 200k' -c 'write -P 0x22 5M 100k' d.vmdk");
    flip_bytes_and_read("d.vmdk", 150, 1);
}

Test(vmdk, header_damaged_stream_never_crashes, .timeout = 300)
{
    sh("qemu-img create -q -f raw src.raw 8M");
    sh("head -c 400000 /dev/urandom | dd of=src.raw bs=1 seek=65536 conv=notrunc");
    sh("qemu-img convert -O vmdk -o subformat=streamOptimized src.raw d.vmdk");
    flip_bytes_and_read("d.vmdk", 150, 2);
}

/* ---- check ---- */

static void collect_line(void *ctx, const char *line)
{
    char *all = ctx;
    strncat(all, line, 4095 - strlen(all));
    strncat(all, "\n", 4095 - strlen(all));
}

/* Run the check of `name`; the findings land in `lines` (4096 bytes). */
static struct img_check run_check(const char *name, char *lines)
{
    struct img *img = must_open(in_dir(name));
    struct img_check c = { .report = collect_line, .report_ctx = lines };
    lines[0] = '\0';
    cr_assert_not_null(img->fmt->check);
    cr_assert_eq(img->fmt->check(img, &c, 0), 0, "check %s: %s", name, img->errmsg);
    img_close(img);
    return c;
}

/* The first grain table of a monolithicSparse qemu-img made, and the sector
 * of its grain directory (header: gdOffset at byte 56). */
static uint64_t first_gt(const char *name, uint64_t *gd_sector)
{
    *gd_sector = peek_le32(name, 56);
    return (uint64_t)peek_le32(name, *gd_sector * 512) * 512;
}

Test(vmdk, check_clean_images)
{
    sh("qemu-img create -f vmdk s.vmdk 64M && qemu-io -f vmdk -c 'write -P 1 0 1M' s.vmdk");
    sh("qemu-img create -f vmdk -o subformat=streamOptimized c.vmdk 64M && "
       "qemu-io -f vmdk -c 'write -P 2 0 1M' c.vmdk");
    char lines[4096];
    for (const char *const *n = (const char *const[]){ "s.vmdk", "c.vmdk", NULL }; *n; n++) {
        struct img_check c = run_check(*n, lines);
        cr_assert_eq(c.corruptions + c.check_errors, 0, "%s: %s", *n, lines);
    }
}

Test(vmdk, check_finds_grain_on_table)
{
    sh("qemu-img create -f vmdk s.vmdk 64M && qemu-io -f vmdk -c 'write -P 1 0 128k' s.vmdk");
    uint64_t gd, gt = first_gt("s.vmdk", &gd);
    patch_le32("s.vmdk", gt + 4, (uint32_t)gd);   /* grain 1 on the directory */
    char lines[4096];
    struct img_check c = run_check("s.vmdk", lines);
    cr_assert_geq(c.corruptions, 1, "%s", lines);
    cr_assert_not_null(strstr(lines, "grain 1 at sector"), "%s", lines);
    cr_assert_not_null(strstr(lines, "overlaps"), "%s", lines);
}

Test(vmdk, check_finds_shared_and_past_end)
{
    sh("qemu-img create -f vmdk s.vmdk 64M && qemu-io -f vmdk -c 'write -P 1 0 64k' s.vmdk");
    uint64_t gd, gt = first_gt("s.vmdk", &gd);
    patch_le32("s.vmdk", gt + 8, peek_le32("s.vmdk", gt));   /* grain 2 shares grain 0 */
    patch_le32("s.vmdk", gt + 12, 0x7fffff00);                /* grain 3 past the end */
    char lines[4096];
    struct img_check c = run_check("s.vmdk", lines);
    cr_assert_eq(c.corruptions, 2, "%s", lines);
    cr_assert_not_null(strstr(lines, "grain 2 at sector"), "%s", lines);
    cr_assert_not_null(strstr(lines, "grain 3 at sector 2147483392 lies past the end"), "%s",
                       lines);
}
