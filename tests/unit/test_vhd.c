/* formats/vhd.c (driver "vpc"): footer, dynamic header and BAT validation
 * on crafted images (good and hostile), differencing disks with and
 * without their parent, images made by qemu-img/qemu-io compared byte for
 * byte with `qemu-img convert -O raw` and range for range with the data of
 * `qemu-img map`, and the real VHDs of ../shared/testdata/real. */
#include "vdi_vhd_util.h"

extern const struct img_format img_format_vpc;

#define KIB 1024u
#define UNUSED 0xffffffffu

TestSuite(vhd_header, .init = tdir_make, .fini = tdir_remove);
TestSuite(vhd_map, .init = tdir_make, .fini = tdir_remove);
TestSuite(vhd_diff, .init = tdir_make, .fini = tdir_remove);
TestSuite(vhd_qemu, .init = tdir_make, .fini = tdir_remove);
TestSuite(vhd_real, .init = tdir_make, .fini = tdir_remove);

/* ---- crafted VHDs ---- */

struct vhd_spec {
    uint32_t type;
    char creator[4];
    uint16_t cyls;
    uint8_t heads, secs;
    uint64_t current_size;
    uint8_t uuid;               /* first byte of the disk's UUID */
    uint32_t block_size, max_entries;
    uint64_t table_offset;      /* 0 = right after the dynamic header */
    const int *slots;           /* guest block -> data slot, -1 unallocated */
    uint32_t n_slots;           /* slot k: bitmap then data filled with fill + k */
    uint8_t fill;
    const uint8_t *bitmap;      /* bitmap bytes of every slot, NULL = all set */
    uint8_t parent_uuid;        /* differencing: the parent's UUID byte */
    const char *parent_name;    /* recorded parent name (UTF-16BE) */
    const char *w2ru;           /* relative locator (UTF-16LE), or NULL */
    bool bad_checksum;
};

/* 4 KiB blocks, 6 blocks: 24 KiB, CHS 1*4*12 = 48 sectors. */
static const int sample_slots[6] = { 0, 1, -1, -1, 3, 2 };

static struct vhd_spec sample_spec(void)
{
    return (struct vhd_spec){
        .type = 3, .creator = "vpc ", .cyls = 1, .heads = 4, .secs = 12,
        .current_size = 24 * KIB, .uuid = 0xa1, .block_size = 4 * KIB, .max_entries = 6,
        .slots = sample_slots, .n_slots = 4, .fill = 0x40,
    };
}

static uint32_t sum_bytes(const uint8_t *b, size_t n)
{
    uint32_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += b[i];
    return s;
}

static void make_footer(const struct vhd_spec *s, uint8_t f[512], uint64_t data_offset)
{
    memset(f, 0, 512);
    memcpy(f, "conectix", 8);
    put_be32(f + 8, 2);
    put_be32(f + 12, 0x00010000);
    put_be64(f + 16, data_offset);
    memcpy(f + 28, s->creator, 4);
    memcpy(f + 36, "Wi2k", 4);
    put_be64(f + 40, s->current_size);
    put_be64(f + 48, s->current_size);
    put_be16(f + 56, s->cyls);
    f[58] = s->heads;
    f[59] = s->secs;
    put_be32(f + 60, s->type);
    f[68] = s->uuid;
    put_be32(f + 64, ~sum_bytes(f, 512) + (s->bad_checksum ? 1 : 0));
}

static size_t put_utf16(uint8_t *out, const char *ascii, bool big_endian)
{
    size_t n = strlen(ascii);
    for (size_t i = 0; i < n; i++) {
        if (big_endian)
            put_be16(out + 2 * i, (uint8_t)ascii[i]);
        else
            put_le16(out + 2 * i, (uint8_t)ascii[i]);
    }
    return 2 * n;
}

static uint64_t round512(uint64_t x) { return (x + 511) / 512 * 512; }

static void build_dynamic(const char *path, const struct vhd_spec *s)
{
    uint64_t table = s->table_offset ? s->table_offset : 1536;
    uint64_t bitmap = s->block_size >= 512 ? round512((s->block_size / 512 + 7) / 8) : 512;
    /* hostile counts do not get their BAT written: lay out for a small one */
    uint32_t laid_out = s->max_entries > 64 ? 6 : s->max_entries;
    uint64_t locator_at = round512(1536 + (uint64_t)laid_out * 4);
    uint64_t data_at = locator_at + 512;
    uint64_t slot_bytes = bitmap + s->block_size;
    uint64_t end = data_at + s->n_slots * slot_bytes;

    uint8_t f[512], dh[1024] = { 0 };
    make_footer(s, f, 512);
    twrite(path, f, 512);
    memcpy(dh, "cxsparse", 8);
    put_be64(dh + 8, UINT64_MAX);
    put_be64(dh + 16, table);
    put_be32(dh + 24, 0x00010000);
    put_be32(dh + 28, s->max_entries);
    put_be32(dh + 32, s->block_size);
    if (s->type == 4) {
        dh[40] = s->parent_uuid;
        put_utf16(dh + 64, s->parent_name, true);
        if (s->w2ru) {
            uint8_t loc[512] = { 0 };
            size_t len = put_utf16(loc, s->w2ru, false);
            memcpy(dh + 576, "W2ru", 4);
            put_be32(dh + 580, 512);
            put_be32(dh + 584, (uint32_t)len);
            put_be64(dh + 592, locator_at);
            tpwrite(path, loc, sizeof(loc), (off_t)locator_at);
        }
    }
    put_be32(dh + 36, ~sum_bytes(dh, sizeof(dh)));
    tpwrite(path, dh, sizeof(dh), 512);

    /* the BAT: only when it lies where we put it (hostile specs move it) */
    if (!s->table_offset) {
        size_t bat_len = (size_t)laid_out * 4;
        uint8_t *bat = malloc(bat_len + 1);
        cr_assert_not_null(bat);
        memset(bat, 0xff, bat_len);
        for (uint32_t i = 0; s->slots && i < laid_out; i++)
            if (s->slots[i] >= 0)
                put_be32(bat + 4 * i, (uint32_t)((data_at + s->slots[i] * slot_bytes) / 512));
        tpwrite(path, bat, bat_len, (off_t)table);
        free(bat);
    }
    uint8_t *slot = malloc(slot_bytes);
    cr_assert_not_null(slot);
    for (uint32_t k = 0; k < s->n_slots; k++) {
        memset(slot, 0xff, bitmap);
        if (s->bitmap)
            memcpy(slot, s->bitmap, (s->block_size / 512 + 7) / 8);
        memset(slot + bitmap, s->fill + (int)k, s->block_size);
        tpwrite(path, slot, slot_bytes, (off_t)(data_at + k * slot_bytes));
    }
    free(slot);
    make_footer(s, f, 512);
    tpwrite(path, f, 512, (off_t)end);
}

static void build_fixed(const char *path, const struct vhd_spec *s, uint64_t data_len,
                        size_t footer_len)
{
    uint8_t *data = malloc(data_len + 1);
    cr_assert_not_null(data);
    for (uint64_t i = 0; i < data_len; i++)
        data[i] = (uint8_t)(i / 512);
    twrite(path, data, data_len);
    free(data);
    uint8_t f[512];
    make_footer(s, f, UINT64_MAX);
    tpwrite(path, f, footer_len, (off_t)data_len);
}

static void expect_refused(const struct vhd_spec *s, const char *needle)
{
    build_dynamic(tpath("bad.vhd"), s);
    texpect_refused(tpath("bad.vhd"), "vpc", needle);
}

static struct img *open_ok(const char *name, const char *format)
{
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath(name), format, err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    return img;
}

/* ---- footer and headers ---- */

Test(vhd_header, probe_by_cookie_at_offset_0)
{
    uint8_t head[4096] = { 0 };
    cr_expect_eq(img_format_vpc.probe(head, sizeof(head), "x.vhd"), 0);
    memcpy(head, "conectix", 8);
    cr_expect_eq(img_format_vpc.probe(head, sizeof(head), "x"), 100);
    cr_expect_eq(img_format_vpc.probe(head, 7, "x"), 0);
}

Test(vhd_header, sample_opens)
{
    struct vhd_spec s = sample_spec();
    build_dynamic(tpath("a.vhd"), &s);
    struct img *img = open_ok("a.vhd", NULL);
    cr_expect_str_eq(img->fmt->name, "vpc");
    cr_expect_eq(img->size, 48 * 512);
    cr_expect_eq(img->cluster_size, 4 * KIB);
    cr_expect_null(img->backing_file);
    img_close(img);
}

Test(vhd_header, size_rule_follows_the_creator)
{
    /* Virtual PC sizes by CHS (here less than current_size), Hyper-V by
     * current_size; the maximal geometry always means current_size. */
    struct vhd_spec s = sample_spec();
    s.cyls = 1, s.heads = 4, s.secs = 10;            /* 40 sectors */
    build_dynamic(tpath("vpc.vhd"), &s);
    struct img *img = open_ok("vpc.vhd", "vpc");
    cr_expect_eq(img->size, 40 * 512);
    img_close(img);
    memcpy(s.creator, "win ", 4);
    build_dynamic(tpath("win.vhd"), &s);
    img = open_ok("win.vhd", "vpc");
    cr_expect_eq(img->size, 24 * KIB);
    img_close(img);
    memcpy(s.creator, "tap\0", 4);
    build_dynamic(tpath("tap.vhd"), &s);
    img = open_ok("tap.vhd", "vpc");
    cr_expect_eq(img->size, 24 * KIB);
    img_close(img);
    memcpy(s.creator, "vpc ", 4);
    s.cyls = 65535, s.heads = 16, s.secs = 255;
    build_dynamic(tpath("max.vhd"), &s);
    img = open_ok("max.vhd", "vpc");
    cr_expect_eq(img->size, 24 * KIB);
    img_close(img);
}

Test(vhd_header, bad_checksum)
{
    struct vhd_spec s = sample_spec();
    s.bad_checksum = true;
    expect_refused(&s, "Incorrect header checksum");
}

Test(vhd_header, block_size_zero)
{
    struct vhd_spec s = sample_spec();
    s.block_size = 0;
    s.n_slots = 0;
    s.slots = NULL;
    expect_refused(&s, "Invalid block size 0");
}

Test(vhd_header, block_size_not_power_of_two)
{
    struct vhd_spec s = sample_spec();
    s.block_size = 3000;
    s.n_slots = 0;
    s.slots = NULL;
    expect_refused(&s, "Invalid block size 3000");
    s.block_size = 256;
    expect_refused(&s, "Invalid block size 256");
}

Test(vhd_header, bat_too_small_for_the_size)
{
    struct vhd_spec s = sample_spec();
    s.max_entries = 5;
    s.n_slots = 0;
    s.slots = NULL;
    expect_refused(&s, "does not cover the virtual size");
}

Test(vhd_header, max_table_entries_huge)
{
    struct vhd_spec s = sample_spec();
    s.max_entries = 1073741825;
    s.table_offset = 1536;   /* not written: the count is refused first */
    s.n_slots = 0;
    s.slots = NULL;
    expect_refused(&s, "max table entries 1073741825 too large");
}

Test(vhd_header, bat_past_eof)
{
    struct vhd_spec s = sample_spec();
    s.max_entries = 100000000;
    s.table_offset = 1536;
    s.n_slots = 0;
    s.slots = NULL;
    expect_refused(&s, "BAT (100000000 entries at 0x600) lies past the end of the file");
    s.max_entries = 6;
    s.table_offset = 1ull << 40;
    expect_refused(&s, "lies past the end of the file");
}

Test(vhd_header, bat_entry_past_eof)
{
    static const int slots[6] = { 0, 1, 5, -1, -1, -1 };
    struct vhd_spec s = sample_spec();
    s.slots = slots;
    s.n_slots = 2;
    expect_refused(&s, "BAT entry 2 (sector");
}

Test(vhd_header, absurd_chs)
{
    /* 65535 x 255 x 255 by "vpc ": 2 TB that a 6-entry BAT cannot cover */
    struct vhd_spec s = sample_spec();
    s.cyls = 65535, s.heads = 255, s.secs = 255;
    expect_refused(&s, "does not cover the virtual size");
    /* the maximal geometry defers to current_size, here beyond 2040 GiB */
    s.heads = 16;
    s.current_size = 1ull << 50;
    expect_refused(&s, "too large");
}

Test(vhd_header, dynamic_header_missing_or_outside)
{
    struct vhd_spec s = sample_spec();
    build_dynamic(tpath("bad.vhd"), &s);
    tpwrite(tpath("bad.vhd"), "xxxxxxxx", 8, 512);
    texpect_refused(tpath("bad.vhd"), "vpc", "no \"cxsparse\" dynamic header at 0x200");
    uint8_t f[512];
    make_footer(&s, f, 1ull << 40);
    tpwrite(tpath("bad.vhd"), f, 512, 0);
    texpect_refused(tpath("bad.vhd"), "vpc", "dynamic header offset 0x10000000000 lies past");
}

Test(vhd_header, unknown_disk_type)
{
    struct vhd_spec s = sample_spec();
    s.type = 5;
    expect_refused(&s, "disk type 5 not supported");
}

Test(vhd_header, not_a_vhd)
{
    uint8_t junk[2048];
    memset(junk, 0x5a, sizeof(junk));
    twrite(tpath("junk"), junk, sizeof(junk));
    texpect_refused(tpath("junk"), "vpc", "not a VHD image");
    twrite(tpath("tiny"), "conect", 6);
    texpect_refused(tpath("tiny"), "vpc", "too small");
}

Test(vhd_header, fixed_with_footer_at_the_end_only)
{
    struct vhd_spec s = sample_spec();
    s.type = 2;
    build_fixed(tpath("f.vhd"), &s, 24 * KIB, 512);
    struct img *img = open_ok("f.vhd", "vpc");
    cr_expect_eq(img->size, 24 * KIB);
    struct img_extent e;
    cr_assert_eq(img_map(img, 512, 4096, &e), 0);
    cr_expect(e.kind == IMG_DATA && e.len == 4096 && e.host_off == 512 && e.fd == img->fd);
    uint8_t b[512];
    cr_assert_eq(img_read(img, b, sizeof(b), 47 * 512), 0);
    cr_expect_eq(b[0], 47);
    img_close(img);
    /* without -f vpc it probes as raw, as qemu does */
    img = open_ok("f.vhd", NULL);
    cr_expect_str_eq(img->fmt->name, "raw");
    img_close(img);
}

Test(vhd_header, fixed_with_old_511_byte_footer)
{
    struct vhd_spec s = sample_spec();
    s.type = 2;
    build_fixed(tpath("old.vhd"), &s, 24 * KIB, 511);
    struct img *img = open_ok("old.vhd", "vpc");
    cr_expect_eq(img->size, 24 * KIB);
    img_close(img);
}

Test(vhd_header, fixed_larger_than_its_data)
{
    struct vhd_spec s = sample_spec();
    s.type = 2;
    build_fixed(tpath("short.vhd"), &s, 20 * KIB, 512);
    texpect_refused(tpath("short.vhd"), "vpc", "larger than the 20480 bytes of data");
}

Test(vhd_header, dynamic_footer_only_at_the_end)
{
    /* a dynamic disk whose copy at offset 0 is gone */
    struct vhd_spec s = sample_spec();
    build_dynamic(tpath("d.vhd"), &s);
    tpwrite(tpath("d.vhd"), "\0\0\0\0\0\0\0\0", 8, 0);
    texpect_refused(tpath("d.vhd"), "vpc", "disk type 3 but there is no footer copy");
}

/* ---- map ---- */

static void expect_extent(struct img *img, uint64_t off, uint64_t len, enum img_kind kind,
                          uint64_t ext_len)
{
    struct img_extent e;
    cr_assert_eq(img_map(img, off, len, &e), 0, "%s", img->errmsg);
    cr_expect_eq(e.kind, kind, "kind at %llu: %d", (unsigned long long)off, e.kind);
    cr_expect_eq(e.len, ext_len, "len at %llu: %llu", (unsigned long long)off,
                 (unsigned long long)e.len);
}

Test(vhd_map, blocks_are_separate_extents)
{
    /* each block has its bitmap before it: neighbours never join */
    struct vhd_spec s = sample_spec();
    build_dynamic(tpath("a.vhd"), &s);
    struct img *img = open_ok("a.vhd", "vpc");
    uint64_t all = img->size;
    expect_extent(img, 0, all, IMG_DATA, 4 * KIB);
    expect_extent(img, 4 * KIB, all - 4 * KIB, IMG_DATA, 4 * KIB);
    expect_extent(img, 8 * KIB, all - 8 * KIB, IMG_UNALLOCATED, 8 * KIB);
    expect_extent(img, 16 * KIB + 100, all - 16 * KIB - 100, IMG_DATA, 4 * KIB - 100);
    struct img_extent e;
    cr_assert_eq(img_map(img, 0, 100, &e), 0);
    cr_expect_eq(e.host_off, 2560 + 512, "slot 0 data after its bitmap: 0x%llx",
                 (unsigned long long)e.host_off);
    static const int fill[6] = { 0x40, 0x41, 0, 0, 0x43, 0x42 };
    uint8_t buf[24 * KIB];
    cr_assert_eq(img_read(img, buf, sizeof(buf), 0), 0, "%s", img->errmsg);
    for (int b = 0; b < 6; b++)
        cr_expect(buf[b * 4 * KIB] == fill[b] && buf[b * 4 * KIB + 4095] == fill[b],
                  "block %d", b);
    img_close(img);
}

Test(vhd_map, dynamic_ignores_the_bitmap_like_qemu)
{
    /* qemu reads an allocated block of a dynamic disk whole */
    static const uint8_t half[1] = { 0xf0 };
    struct vhd_spec s = sample_spec();
    s.bitmap = half;
    build_dynamic(tpath("a.vhd"), &s);
    struct img *img = open_ok("a.vhd", "vpc");
    expect_extent(img, 0, img->size, IMG_DATA, 4 * KIB);
    img_close(img);
}

/* ---- differencing ---- */

/* Parent: 6 blocks, all allocated, filled 0x50..; child: blocks 0 and 4
 * allocated, sectors 0-1 and 6-7 of each present (bitmap 0xc3). */
static void build_pair(bool with_parent, uint8_t parent_uuid, const char *w2ru)
{
    static const int all[6] = { 0, 1, 2, 3, 4, 5 };
    static const int two[6] = { 0, -1, -1, -1, 1, -1 };
    static const uint8_t bits[1] = { 0xc3 };
    struct vhd_spec p = sample_spec();
    p.uuid = 0x77;
    p.slots = all;
    p.n_slots = 6;
    p.fill = 0x50;
    if (with_parent)
        build_dynamic(tpath("parent.vhd"), &p);
    struct vhd_spec c = sample_spec();
    c.type = 4;
    c.slots = two;
    c.n_slots = 2;
    c.fill = 0x60;
    c.bitmap = bits;
    c.parent_uuid = parent_uuid;
    c.parent_name = "C:\\VMs\\parent.vhd";
    c.w2ru = w2ru;
    build_dynamic(tpath("child.vhd"), &c);
}

static void expect_sector(const uint8_t *buf, unsigned sector, int value)
{
    cr_expect(buf[sector * 512] == value && buf[sector * 512 + 511] == value,
              "sector %u: 0x%02x, expected 0x%02x", sector, buf[sector * 512], value);
}

Test(vhd_diff, bitmap_splits_between_child_and_parent)
{
    build_pair(true, 0x77, ".\\parent.vhd");
    struct img *img = open_ok("child.vhd", NULL);
    cr_assert_str_eq(img->backing_file, "./parent.vhd");
    cr_assert_not_null(img->backing);
    /* this layer alone: sectors 0-1 here, 2-5 defer, 6-7 here */
    struct img_extent e;
    cr_assert_eq(img_map(img, 0, img->size, &e), 0);
    cr_expect(e.kind == IMG_DATA && e.len == 1024 && e.depth == 0);
    cr_assert_eq(img_map(img, 1024, img->size - 1024, &e), 0);
    cr_expect(e.kind == IMG_DATA && e.len == 2048 && e.depth == 1, "parent answers 2-5");
    cr_assert_eq(img_map(img, 3072, img->size - 3072, &e), 0);
    cr_expect(e.kind == IMG_DATA && e.len == 1024 && e.depth == 0);
    uint8_t buf[24 * KIB];
    cr_assert_eq(img_read(img, buf, sizeof(buf), 0), 0, "%s", img->errmsg);
    for (unsigned s = 0; s < 48; s++) {
        unsigned block = s / 8, in = s % 8;
        bool child = (block == 0 || block == 4) && (in < 2 || in >= 6);
        int value = child ? (block == 0 ? 0x60 : 0x61) : 0x50 + (int)block;
        expect_sector(buf, s, value);
    }
    img_close(img);
}

Test(vhd_diff, parent_found_by_recorded_name)
{
    /* no relative locator: the file name of the recorded absolute path */
    build_pair(true, 0x77, NULL);
    struct img *img = open_ok("child.vhd", NULL);
    cr_expect_str_eq(img->backing_file, "parent.vhd");
    cr_expect_str_eq(img->backing_fmt, "vpc");
    img_close(img);
}

Test(vhd_diff, without_parent_opens_alone_like_qemu)
{
    build_pair(false, 0x77, ".\\parent.vhd");
    struct img *img = open_ok("child.vhd", NULL);
    cr_expect_null(img->backing_file);
    uint8_t buf[24 * KIB];
    cr_assert_eq(img_read(img, buf, sizeof(buf), 0), 0, "%s", img->errmsg);
    expect_sector(buf, 1, 0x60);
    expect_sector(buf, 2, 0);
    expect_sector(buf, 7, 0x60);
    expect_sector(buf, 8, 0);
    expect_sector(buf, 38, 0x61);
    img_close(img);
}

Test(vhd_diff, parent_with_another_uuid_refused)
{
    build_pair(true, 0x78, ".\\parent.vhd");
    texpect_refused(tpath("child.vhd"), NULL, "UUID differs");
}

/* ---- images made by qemu ---- */

static void check_against_qemu(const char *name, const char *format)
{
    struct img *img = open_ok(name, format);
    cr_expect_str_eq(img->fmt->name, "vpc");
    texpect_bytes_like_qemu(img, name, "vpc");
    texpect_map_like_qemu(img, name, "vpc");
    img_close(img);
}

static const char vhd_writes[] =
    "qemu-io -f vpc -c 'write -P 0x11 5M 4k' -c 'write -P 0x22 0 512' "
    "-c 'write -P 0x33 2096640 1024' -c 'write -P 0x44 9M 64k' "
    "-c 'write -P 0x55 3M 1M' -c 'write -P 0x66 11M 512' %s";

Test(vhd_qemu, dynamic)
{
    tsh("qemu-img create -q -f vpc d.vhd 12M");   /* CHS rounds the size */
    tsh(vhd_writes, "d.vhd");
    check_against_qemu("d.vhd", NULL);
}

Test(vhd_qemu, dynamic_force_size)
{
    tsh("qemu-img create -q -f vpc -o force_size=on d2.vhd 12M");   /* creator qem2 */
    tsh(vhd_writes, "d2.vhd");
    check_against_qemu("d2.vhd", NULL);
}

Test(vhd_qemu, fixed)
{
    tsh("qemu-img create -q -f vpc -o subformat=fixed f.vhd 12M");
    tsh(vhd_writes, "f.vhd");
    check_against_qemu("f.vhd", "vpc");
}

Test(vhd_qemu, empty_dynamic)
{
    tsh("qemu-img create -q -f vpc e.vhd 7M");
    check_against_qemu("e.vhd", NULL);
}

/* ---- real images ---- */

Test(vhd_real, dissect_dynamic)
{
    texpect_real_from_manifest("dissect/dynamic.vhd.xz", NULL, true);
}

Test(vhd_real, dfvfs_ext2_qemu_made)
{
    texpect_real_from_manifest("dfvfs/ext2.vhd.xz", NULL, true);
}

Test(vhd_real, dfvfs_differential_without_parent)
{
    /* Bytes as qemu's; the map is not compared: qemu calls the whole
     * allocated block data, we only the 18 sectors its bitmap marks
     * (the others read as zeros either way). */
    texpect_real_from_manifest("dfvfs/fat-differential.vhd.xz", NULL, false);
}

Test(vhd_real, hyperv_127g_size_and_map)
{
    /* 127 GiB: size and map only (see HASH_LIMIT) */
    texpect_real_from_manifest("qemu/hyperv2012r2-dynamic.vhd.bz2", NULL, true);
}

Test(vhd_real, virtualpc_chs_size_and_map)
{
    texpect_real_from_manifest("qemu/virtualpc-dynamic.vhd.bz2", NULL, true);
}

Test(vhd_real, dissect_fixed_with_explicit_format)
{
    /* qemu probes it as raw; the notes give the -f vpc result */
    struct real_entry e;
    if (!manifest_entry("dissect/fixed.vhd.xz", &e))
        cr_skip_test("no manifest entry");
    const char *vs = strstr(e.notes, "virtual_size=");
    const char *sha = strstr(e.notes, "sha256_raw=");
    cr_assert(vs && sha, "notes: %s", e.notes);
    char hex[65];
    snprintf(hex, sizeof(hex), "%s", sha + strlen("sha256_raw="));
    texpect_real_ok("dissect/fixed.vhd.xz", "vpc", strtoull(vs + 13, NULL, 10), hex, false);
}

Test(vhd_real, afl5_rejected)
{
    const char *name = fetch_real("qemu/afl5.img.bz2");
    if (!name)
        cr_skip_test("no shared test data");
    texpect_refused(tpath(name), NULL, "max table entries 1073741825 too large");
}

Test(vhd_real, dfvfs_bad_checksum_rejected)
{
    const char *name = fetch_real("dfvfs/image.vhd.xz");
    if (!name)
        cr_skip_test("no shared test data");
    texpect_refused(tpath(name), NULL, "Incorrect header checksum");
}

/* ---- check ---- */

TestSuite(vhd_check, .init = tdir_make, .fini = tdir_remove);

static uint64_t count_corruptions(const char *name)
{
    struct img *img = open_ok(name, "vpc");
    struct img_check c = { 0 };
    cr_assert_not_null(img->fmt->check);
    cr_assert_eq(img->fmt->check(img, &c, 0), 0, "%s", img->errmsg);
    img_close(img);
    return c.corruptions;
}

Test(vhd_check, sample_is_clean)
{
    struct vhd_spec s = sample_spec();
    build_dynamic(tpath("a.vhd"), &s);
    cr_expect_eq(count_corruptions("a.vhd"), 0);
}

/* Guest blocks 0 and 1 on one slot: both read the same bytes, and a write
 * to one changes the other. */
Test(vhd_check, shared_block_found)
{
    static const int shared[6] = { 0, 0, -1, -1, 3, 2 };
    struct vhd_spec s = sample_spec();
    s.slots = shared;
    build_dynamic(tpath("a.vhd"), &s);
    cr_expect_eq(count_corruptions("a.vhd"), 1);
}

Test(vhd_check, missing_end_footer_found)
{
    struct vhd_spec s = sample_spec();
    build_dynamic(tpath("a.vhd"), &s);
    struct stat st;
    cr_assert_eq(stat(tpath("a.vhd"), &st), 0);
    cr_assert_eq(truncate(tpath("a.vhd"), st.st_size - 512), 0);
    cr_expect_eq(count_corruptions("a.vhd"), 1);
}
