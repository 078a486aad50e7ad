"""Hostile VDI images: broken copies of a dynamic VDI that qemu-img made.

A VDI is a 512-byte little-endian header, a block map (one u32 per 1 MiB
guest block: its slot in the data area, 0xffffffff unallocated, 0xfffffffe
discarded) and the data area.  Templates stay small (each allocated block
costs 1 MiB of file) and keep a hole, so that every entry kind is present."""
from common import patch, u32

FMT = "vdi"
MiB = 1 << 20
# Header fields (VirtualBox's VDIHEADER1, as formats/vdi.c decodes it).
VERSION, IMAGE_TYPE, OFF_BMAP, OFF_DATA = 0x44, 0x4c, 0x154, 0x158
SECTOR_SIZE, DISK_SIZE, BLOCK_SIZE = 0x168, 0x170, 0x178
BLOCKS, ALLOCATED, UUID_LINK, UUID_PARENT = 0x180, 0x184, 0x1a8, 0x1b8
UNALLOCATED, DISCARDED = 0xffffffff, 0xfffffffe


def le32(d, off):
    return u32(d, off, big=False)


def layout(d):
    bmap, blocks = le32(d, OFF_BMAP), le32(d, BLOCKS)
    return bmap, le32(d, OFF_DATA), [le32(d, bmap + 4 * i) for i in range(blocks)]


def generate(ctx):
    def emit(name, data_, fault, expect="bad"):
        ctx.emit(f"vdi-{name}.vdi", data_, FMT, fault, expect)

    # Truncations: 3 MiB with blocks 0 and 2 written (slots 0 and 1).
    d = ctx.template("vdi.vdi", FMT, "3M", writes=["write -P 0x11 0 64k", "write -P 0x33 2M 64k"])
    bmap, data, entries = layout(d)
    assert entries == [0, UNALLOCATED, 1] and data % 512 == 0, "qemu's layout changed"
    # (a file cut inside the 512-byte header is no VDI at all: it probes as raw)
    b = {"block map": bmap, "block map end": bmap + 4 * len(entries), "data area": data}
    for i, e in enumerate(entries):
        if e != UNALLOCATED:
            b[f"block {i}"] = data + e * MiB
            b[f"inside block {i}"] = data + e * MiB + MiB // 2
    ctx.truncations("vdi", d, FMT, "vdi", b)

    # Header fields that do not depend on the blocks: an image with none
    # allocated keeps these cases small.
    e = ctx.template("vdi-empty.vdi", FMT, "4M")
    for name, off, fmt, v, fault in [
        ("bmap-past-eof", OFF_BMAP, "<I", 16 * MiB, "block map offset past EOF"),
        ("bmap-max", OFF_BMAP, "<I", 0xfffffe00, "block map offset 0xfffffe00"),
        ("bmap-unaligned", OFF_BMAP, "<I", le32(e, OFF_BMAP) + 1,
         "block map offset not sector aligned"),
        ("bmap-at-header", OFF_BMAP, "<I", 0, "block map read from the header's bytes"),
        ("data-past-eof", OFF_DATA, "<I", 16 * MiB, "data offset past EOF"),
        ("data-max", OFF_DATA, "<I", 0xfffffe00,
         "data offset 0xfffffe00 (+ slot * 1 MiB passes 32 bits)"),
        ("data-unaligned", OFF_DATA, "<I", le32(e, OFF_DATA) + 1,
         "data offset not sector aligned"),
        # sizes that overflow or disagree
        ("blocks-x4-wraps-32", BLOCKS, "<I", 0x40000000,
         "2^30 blocks: the block map's bytes (blocks*4) wrap 32 bits to 0"),
        ("blocks-max", BLOCKS, "<I", 0xffffffff, "0xffffffff blocks in image"),
        ("blocks-zero", BLOCKS, "<I", 0, "no blocks for a 4 MiB disk"),
        ("blocks-short", BLOCKS, "<I", 3, "one block fewer than the disk size needs"),
        ("disk-size-max", DISK_SIZE, "<Q", 2**64 - 1,
         "disk size 2^64-1 (rounding it up to a sector wraps)"),
        ("disk-size-past-blocks", DISK_SIZE, "<Q", 5 * MiB,
         "disk size one block more than the block map covers"),
        ("disk-size-2pow63", DISK_SIZE, "<Q", 2**63, "disk size 2^63"),
        # block size and other geometry out of range
        ("block-size-zero", BLOCK_SIZE, "<I", 0, "block size 0"),
        ("block-size-3m", BLOCK_SIZE, "<I", 3 * MiB, "block size 3 MiB, not a power of two"),
        ("block-size-odd", BLOCK_SIZE, "<I", MiB + 512, "block size 1 MiB + 512"),
        ("block-size-2m", BLOCK_SIZE, "<I", 2 * MiB, "block size 2 MiB (only 1 MiB exists)"),
        ("block-size-2pow31", BLOCK_SIZE, "<I", 2**31, "block size 2 GiB"),
        ("block-size-max", BLOCK_SIZE, "<I", 0xffffffff, "block size 0xffffffff"),
        ("sector-size-4k", SECTOR_SIZE, "<I", 4096, "sector size 4096"),
        ("sector-size-zero", SECTOR_SIZE, "<I", 0, "sector size 0"),
        ("version-2", VERSION, "<I", 0x00020000, "version 2.0"),
        ("type-undo", IMAGE_TYPE, "<I", 3, "image type 3 (undo)"),
        ("type-diff", IMAGE_TYPE, "<I", 4, "image type 4 (differencing)"),
        ("type-max", IMAGE_TYPE, "<I", 0xffffffff, "image type 0xffffffff"),
        ("parent-uuid", UUID_PARENT, "16s", b"\x01" * 16,
         "parent UUID set: a differencing image whose parent cannot be found"),
        ("link-uuid", UUID_LINK, "16s", b"\x01" * 16, "link UUID set"),
    ]:
        emit(name, patch(e, off, fmt, v), fault)

    # Cases about the blocks: 2 MiB, block 0 written (slot 0), block 1 a hole.
    d = ctx.template("vdi-one.vdi", FMT, "2M", writes=["write -P 0x11 0 64k"])
    bmap, data, entries = layout(d)
    assert entries == [0, UNALLOCATED], "qemu's layout changed"

    def entry(i):
        return bmap + 4 * i
    for name, off, fmt, v, fault in [
        ("data-at-header", OFF_DATA, "<I", 0,
         "data area at offset 0: block 0 is the header and block map"),
        ("data-at-bmap", OFF_DATA, "<I", bmap, "data area starts on the block map"),
        ("allocated-low", ALLOCATED, "<I", 0,
         "header counts no allocated block, the map uses 1 (next write would reuse it)"),
        ("allocated-max", ALLOCATED, "<I", 0xffffffff, "header counts 2^32-1 allocated blocks"),
        ("entry-past-eof", entry(0), "<I", 1000, "block 0 in slot 1000, past EOF"),
        ("entry-max", entry(0), "<I", DISCARDED - 1, "block 0 in slot 0xfffffffd"),
        ("entry-slot-wraps", entry(0), "<I", 0x1000, "block 0 in slot 4096: slot*1 MiB is 2^32"),
        ("entry-shared", entry(1), "<I", 0, "blocks 0 and 1 share slot 0"),
        ("entry-beyond-blocks", entry(1), "<I", len(entries),
         "block 1 in slot 2, past the blocks the image may have (and past EOF)"),
    ]:
        emit(name, patch(d, off, fmt, v), fault)
    # The slot's bytes present, but past the header's allocated count.
    emit("entry-unallocated-slot", patch(d + bytes(MiB), entry(1), "<I", 1),
         "block 1 in slot 1: inside the file but past the header's allocated count")

    # Odd but valid.
    emit("entry-discarded", patch(patch(d, entry(0), "<I", DISCARDED), ALLOCATED, "<I", 0),
         "block 0 discarded (0xfffffffe): reads as zeros", "good")
    emit("disk-size-unaligned", patch(d, DISK_SIZE, "<Q", 2 * MiB - 100),
         "disk size not a multiple of 512 (rounded up, as VBoxManage writes it)", "good")

    # A static image (every block allocated at creation) cut in its last block.
    s = ctx.template("vdi-static.vdi", FMT, "2M", opts="static=on",
                     writes=["write -P 0x44 0 2M"])
    ctx.emit("vdi-static-cut.vdi", s[:len(s) - MiB // 2], FMT,
             "static image cut in the middle of its last block")
