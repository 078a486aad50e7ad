/* formats/vdi.c: header validation and block map decoding on crafted images
 * (good and hostile), images made by qemu-img/qemu-io compared byte for
 * byte with `qemu-img convert -O raw` and range for range with the data of
 * `qemu-img map`, and the real VDIs of ../shared/testdata/real. */
#include "vdi_vhd_util.h"

extern const struct img_format img_format_vdi;

#define MIB (1u << 20)
#define UNALLOC 0xffffffffu
#define DISCARD 0xfffffffeu

TestSuite(vdi_header, .init = tdir_make, .fini = tdir_remove);
TestSuite(vdi_map, .init = tdir_make, .fini = tdir_remove);
TestSuite(vdi_qemu, .init = tdir_make, .fini = tdir_remove);
TestSuite(vdi_real, .init = tdir_make, .fini = tdir_remove);

/* ---- a crafted VDI: header, block map, data slots ---- */

struct vdi_spec {
    uint32_t version, type, offset_bmap, offset_data, sector_size, block_size, blocks;
    uint64_t disk_size;
    bool link_uuid, parent_uuid;
    const uint32_t *bmap;      /* `blocks` entries */
    uint32_t data_slots;       /* 1 MiB slots written, slot k filled with 0x40 + k */
};

/* 6 blocks: two contiguous slots, a never-allocated block, a discarded
 * block, then two slots in reverse order. */
static const uint32_t sample_bmap[6] = { 0, 1, UNALLOC, DISCARD, 3, 2 };

static struct vdi_spec sample_spec(void)
{
    return (struct vdi_spec){
        .version = 0x00010001, .type = 1, .offset_bmap = 512, .offset_data = 1024,
        .sector_size = 512, .block_size = MIB, .blocks = 6, .disk_size = 6ull * MIB,
        .bmap = sample_bmap, .data_slots = 4,
    };
}

static void build_vdi(const char *path, const struct vdi_spec *s)
{
    uint8_t h[512] = { 0 };
    snprintf((char *)h, 64, "<<< imgfs test VirtualBox Disk Image >>>\n");
    put_le32(h + 0x40, 0xbeda107f);
    put_le32(h + 0x44, s->version);
    put_le32(h + 0x48, 0x190);
    put_le32(h + 0x4c, s->type);
    put_le32(h + 0x154, s->offset_bmap);
    put_le32(h + 0x158, s->offset_data);
    put_le32(h + 0x168, s->sector_size);
    put_le64(h + 0x170, s->disk_size);
    put_le32(h + 0x178, s->block_size);
    put_le32(h + 0x180, s->blocks);
    put_le32(h + 0x184, s->data_slots);
    h[0x188] = 0x11;   /* image UUID: set, as always */
    if (s->link_uuid)
        h[0x1a8] = 0x22;
    if (s->parent_uuid)
        h[0x1b8] = 0x33;
    twrite(path, h, sizeof(h));
    if (s->bmap) {
        uint8_t *bm = malloc((size_t)s->blocks * 4 + 1);
        cr_assert_not_null(bm);
        for (uint32_t i = 0; i < s->blocks; i++)
            put_le32(bm + 4 * i, s->bmap[i]);
        tpwrite(path, bm, (size_t)s->blocks * 4, s->offset_bmap);
        free(bm);
    }
    /* the data area starts at offset_data even while it is empty */
    cr_assert_eq(truncate(path, s->offset_data), 0);
    uint8_t *slot = malloc(MIB);
    cr_assert_not_null(slot);
    for (uint32_t k = 0; k < s->data_slots; k++) {
        memset(slot, 0x40 + (int)k, MIB);
        tpwrite(path, slot, MIB, (off_t)s->offset_data + (off_t)k * MIB);
    }
    free(slot);
}

static void expect_refused(const struct vdi_spec *s, const char *needle)
{
    build_vdi(tpath("bad.vdi"), s);
    texpect_refused(tpath("bad.vdi"), "vdi", needle);
}

/* ---- header ---- */

Test(vdi_header, probe_by_signature)
{
    uint8_t head[4096] = { 0 };
    cr_expect_eq(img_format_vdi.probe(head, sizeof(head), "x.vdi"), 0);
    put_le32(head + 0x40, 0xbeda107f);
    cr_expect_eq(img_format_vdi.probe(head, sizeof(head), "x"), 100);
    cr_expect_eq(img_format_vdi.probe(head, 0x44, "x"), 0, "short head is not a VDI");
}

Test(vdi_header, sample_opens_and_probes)
{
    struct vdi_spec s = sample_spec();
    build_vdi(tpath("a.vdi"), &s);
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath("a.vdi"), NULL, err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    cr_expect_str_eq(img->fmt->name, "vdi");
    cr_expect_eq(img->size, 6ull * MIB);
    cr_expect_eq(img->cluster_size, MIB);
    cr_expect_null(img->backing_file);
    img_close(img);
}

Test(vdi_header, bad_signature)
{
    struct vdi_spec s = sample_spec();
    build_vdi(tpath("bad.vdi"), &s);
    uint8_t zero[4] = { 0 };
    tpwrite(tpath("bad.vdi"), zero, 4, 0x40);
    texpect_refused(tpath("bad.vdi"), "vdi", "not a VDI image");
}

Test(vdi_header, version_1_0_refused)
{
    struct vdi_spec s = sample_spec();
    s.version = 0x00010000;
    expect_refused(&s, "unsupported VDI version 1.0");
}

Test(vdi_header, block_size_zero)
{
    struct vdi_spec s = sample_spec();
    s.block_size = 0;
    expect_refused(&s, "block size 0 is not 1 MiB");
}

Test(vdi_header, block_size_not_power_of_two)
{
    struct vdi_spec s = sample_spec();
    s.block_size = 3 * MIB;
    expect_refused(&s, "block size 3145728");
}

Test(vdi_header, block_size_huge)
{
    struct vdi_spec s = sample_spec();
    s.block_size = 0x80000000u;
    expect_refused(&s, "block size 2147483648");
}

Test(vdi_header, sector_size)
{
    struct vdi_spec s = sample_spec();
    s.sector_size = 4096;
    expect_refused(&s, "sector size 4096");
}

Test(vdi_header, unaligned_offsets)
{
    struct vdi_spec s = sample_spec();
    s.offset_bmap = 520;
    expect_refused(&s, "block map offset 0x208 is not sector aligned");
    s = sample_spec();
    s.offset_data = 1030;
    expect_refused(&s, "data offset 0x406 is not sector aligned");
}

Test(vdi_header, disk_size_beyond_block_map)
{
    struct vdi_spec s = sample_spec();
    s.disk_size = 6ull * MIB + 512;
    expect_refused(&s, "block map covers only 6291456 bytes");
}

Test(vdi_header, disk_size_huge)
{
    struct vdi_spec s = sample_spec();
    s.disk_size = UINT64_MAX - 511;
    expect_refused(&s, "too large");
}

Test(vdi_header, too_many_blocks)
{
    struct vdi_spec s = sample_spec();
    s.bmap = NULL;
    s.blocks = 0xffffffffu;
    expect_refused(&s, "too many blocks 4294967295");
}

Test(vdi_header, block_map_past_eof)
{
    /* A plausible count whose map the file does not hold: refused before
     * anything is allocated. */
    struct vdi_spec s = sample_spec();
    s.bmap = NULL;
    s.data_slots = 0;
    s.blocks = 100000000;
    s.offset_data = 512;
    expect_refused(&s, "block map (100000000 entries at 0x200) lies past the end of the file");
}

Test(vdi_header, block_map_entry_past_eof)
{
    static const uint32_t bmap[6] = { 0, 1, 12, UNALLOC, UNALLOC, UNALLOC };
    struct vdi_spec s = sample_spec();
    s.bmap = bmap;
    s.data_slots = 2;
    expect_refused(&s, "block map entry 2 (block 12) points past the end of the file");
}

Test(vdi_header, data_offset_past_eof)
{
    static const uint32_t bmap[6] = { UNALLOC, UNALLOC, UNALLOC, UNALLOC, UNALLOC, UNALLOC };
    struct vdi_spec s = sample_spec();
    s.bmap = bmap;
    s.data_slots = 0;
    s.offset_data = 0x100000;
    build_vdi(tpath("bad.vdi"), &s);
    cr_assert_eq(truncate(tpath("bad.vdi"), 4096), 0);
    texpect_refused(tpath("bad.vdi"), "vdi", "data offset 0x100000 lies past the end of the file");
}

Test(vdi_header, differencing_refused)
{
    struct vdi_spec s = sample_spec();
    s.parent_uuid = true;
    expect_refused(&s, "non-null parent UUID");
    s = sample_spec();
    s.link_uuid = true;
    expect_refused(&s, "non-null link UUID");
}

Test(vdi_header, unknown_image_type)
{
    struct vdi_spec s = sample_spec();
    s.type = 3;
    expect_refused(&s, "image type 3 not supported");
}

Test(vdi_header, truncated_header)
{
    twrite(tpath("bad.vdi"), "<<< VirtualBox >>>", 18);
    texpect_refused(tpath("bad.vdi"), "vdi", "too small");
}

Test(vdi_header, odd_disk_size_rounds_up_to_a_sector)
{
    /* "VBoxManage convertfromraw" writes such sizes; qemu rounds up. */
    struct vdi_spec s = sample_spec();
    s.disk_size = 5ull * MIB + 1000;
    build_vdi(tpath("odd.vdi"), &s);
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath("odd.vdi"), "vdi", err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    cr_expect_eq(img->size, 5ull * MIB + 1024);
    img_close(img);
}

/* ---- map ---- */

static void expect_extent(struct img *img, uint64_t off, uint64_t len, enum img_kind kind,
                          uint64_t ext_len, uint64_t host)
{
    struct img_extent e;
    cr_assert_eq(img_map(img, off, len, &e), 0, "%s", img->errmsg);
    cr_expect_eq(e.off, off);
    cr_expect_eq(e.kind, kind, "kind at %llu: %d", (unsigned long long)off, e.kind);
    cr_expect_eq(e.len, ext_len, "len at %llu: %llu", (unsigned long long)off,
                 (unsigned long long)e.len);
    if (kind == IMG_DATA) {
        cr_expect_eq(e.fd, img->fd);
        cr_expect_eq(e.host_off, host, "host at %llu: 0x%llx", (unsigned long long)off,
                     (unsigned long long)e.host_off);
    }
}

Test(vdi_map, runs_merge_only_when_contiguous)
{
    struct vdi_spec s = sample_spec();
    build_vdi(tpath("a.vdi"), &s);
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath("a.vdi"), "vdi", err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    uint64_t all = 6ull * MIB;
    expect_extent(img, 0, all, IMG_DATA, 2ull * MIB, 1024);          /* slots 0,1 joined */
    expect_extent(img, 4096, all - 4096, IMG_DATA, 2ull * MIB - 4096, 1024 + 4096);
    expect_extent(img, 0, 100, IMG_DATA, 100, 1024);                 /* cut by len */
    expect_extent(img, 2ull * MIB, 4ull * MIB, IMG_UNALLOCATED, MIB, 0);
    expect_extent(img, 3ull * MIB, 3ull * MIB, IMG_ZERO, MIB, 0);    /* discarded */
    expect_extent(img, 4ull * MIB, 2ull * MIB, IMG_DATA, MIB, 1024 + 3ull * MIB);
    expect_extent(img, 5ull * MIB + 7, MIB - 7, IMG_DATA, MIB - 7, 1024 + 2ull * MIB + 7);

    /* and the bytes: each block shows its slot's fill */
    static const int fill[6] = { 0x40, 0x41, 0, 0, 0x43, 0x42 };
    uint8_t *buf = malloc(all);
    cr_assert_not_null(buf);
    cr_assert_eq(img_read(img, buf, all, 0), 0, "%s", img->errmsg);
    for (int b = 0; b < 6; b++)
        for (uint64_t i = 0; i < MIB; i += 4093)
            cr_assert_eq(buf[b * MIB + i], fill[b], "block %d byte %llu", b,
                         (unsigned long long)i);
    free(buf);
    img_close(img);
}

Test(vdi_map, duplicate_entries_tolerated)
{
    /* Two guest blocks on one data slot: read-only, well defined, as qemu
     * reads it; both show the slot's bytes. */
    static const uint32_t bmap[6] = { 0, 0, UNALLOC, UNALLOC, UNALLOC, UNALLOC };
    struct vdi_spec s = sample_spec();
    s.bmap = bmap;
    s.data_slots = 1;
    build_vdi(tpath("dup.vdi"), &s);
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath("dup.vdi"), "vdi", err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    expect_extent(img, 0, 6ull * MIB, IMG_DATA, MIB, 1024);
    expect_extent(img, MIB, 5ull * MIB, IMG_DATA, MIB, 1024);
    expect_extent(img, 2ull * MIB, 4ull * MIB, IMG_UNALLOCATED, 4ull * MIB, 0);
    img_close(img);
}

Test(vdi_map, empty_image)
{
    static const uint32_t bmap[6] = { UNALLOC, UNALLOC, UNALLOC, UNALLOC, UNALLOC, UNALLOC };
    struct vdi_spec s = sample_spec();
    s.bmap = bmap;
    s.data_slots = 0;
    build_vdi(tpath("e.vdi"), &s);
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath("e.vdi"), "vdi", err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    expect_extent(img, 0, 6ull * MIB, IMG_UNALLOCATED, 6ull * MIB, 0);
    uint64_t data = 1;
    cr_expect_eq(img_data_bytes(img, &data), 0);
    cr_expect_eq(data, 0);
    img_close(img);
}

/* ---- images made by qemu ---- */

static void check_against_qemu(const char *name)
{
    char err[IMG_ERRMSG_MAX];
    struct img *img = topen(tpath(name), NULL, err, sizeof(err));
    cr_assert_not_null(img, "%s", err);
    cr_expect_str_eq(img->fmt->name, "vdi");
    texpect_bytes_like_qemu(img, name, "vdi");
    texpect_map_like_qemu(img, name, "vdi");
    img_close(img);
}

/* Writes at scattered offsets: block starts and ends, straddling blocks,
 * the last partial block, and blocks allocated out of guest order. */
static const char vdi_writes[] =
    "qemu-io -f vdi -c 'write -P 0x11 5M 4k' -c 'write -P 0x22 0 512' "
    "-c 'write -P 0x33 1048064 1024' -c 'write -P 0x44 6M 64k' "
    "-c 'write -P 0x55 3M 1M' -c 'write -P 0x66 %s' %s";

Test(vdi_qemu, dynamic)
{
    tsh("qemu-img create -q -f vdi d.vdi 12583424");   /* 12 MiB + 512: partial last block */
    tsh(vdi_writes, "12582912 512", "d.vdi");
    check_against_qemu("d.vdi");
}

Test(vdi_qemu, static_image)
{
    tsh("qemu-img create -q -f vdi -o static=on s.vdi 8M");
    tsh(vdi_writes, "8387584 512", "s.vdi");
    check_against_qemu("s.vdi");
}

Test(vdi_qemu, empty_dynamic)
{
    tsh("qemu-img create -q -f vdi e.vdi 3M");
    check_against_qemu("e.vdi");
}

Test(vdi_qemu, converted_from_raw)
{
    /* convert writes blocks in order: adjacent slots merge into one extent */
    tsh("head -c 3145728 /dev/zero | tr '\\0' 'x' > r.raw && "
        "dd if=/dev/zero of=r.raw bs=1M seek=5 count=1 conv=notrunc && "
        "truncate -s 8M r.raw && qemu-img convert -f raw -O vdi r.raw c.vdi");
    check_against_qemu("c.vdi");
}

/* ---- real images ---- */

Test(vdi_real, dissect_basic)
{
    texpect_real_from_manifest("dissect/basic.vdi.xz", NULL, true);
}

Test(vdi_real, bwlehrpool_snapshot_rejected)
{
    const char *name = fetch_real("bwlehrpool/image-default_snapshot.vdi");
    if (!name)
        cr_skip_test("no shared test data");
    texpect_refused(tpath(name), NULL, "non-null link UUID");
}
