"""Hostile VHD ("vpc") images: broken copies of dynamic VHDs that qemu-img
made, and differencing disks built from them.

A dynamic VHD is a 512-byte big-endian footer (copied at offset 0), a
1024-byte "cxsparse" dynamic header, the BAT (one u32 sector per block,
0xffffffff unused) and blocks of a sector bitmap then the data; the footer
closes the file.  qemu's blocks are 2 MiB, so the templates allocate at most
one.  Fixed VHDs are left out: with no footer at offset 0 they probe
as raw files (in qemu too), so a broken one is only an odd raw file.
Every footer edited gets its checksum recomputed, so that the edit, not the
checksum, is what a reader meets."""
import os

from common import patch, put, u32, u64

FMT = "vpc"
SECTOR = 512
MiB = 1 << 20
# Footer fields.
F_DATA_OFFSET, F_CREATOR, F_SIZE, F_CHS, F_TYPE, F_CHECKSUM, F_UUID = 16, 28, 48, 56, 60, 64, 68
# Dynamic header fields (relative to the header).
H_TABLE, H_ENTRIES, H_BLOCK, H_CHECKSUM, H_PARENT_UUID = 16, 28, 32, 36, 40
H_PARENT_NAME, H_LOCATORS = 64, 576
W2RU = b"W2ru"
TYPE_DIFF = 4


def checksummed(block, field):
    """`block` with the one's complement byte sum at `field` recomputed."""
    block = patch(block, field, ">I", 0)
    return patch(block, field, ">I", ~sum(block) & 0xffffffff)


class Vhd:
    def __init__(self, d):
        assert d[:SECTOR] == d[-SECTOR:], "qemu's footer copies differ"
        self.d = d
        self.dh = u64(d, F_DATA_OFFSET)
        self.bat = u64(d, self.dh + H_TABLE)
        self.entries = u32(d, self.dh + H_ENTRIES)
        self.block = u32(d, self.dh + H_BLOCK)
        self.bat_entries = [u32(d, self.bat + 4 * i) for i in range(self.entries)]

    def footer(self, off, fmt, *v, d=None):
        """Both footer copies with a field changed."""
        d = d or self.d
        f = checksummed(patch(d[:SECTOR], off, fmt, *v), F_CHECKSUM)
        return f + d[SECTOR:-SECTOR] + f

    def header(self, off, fmt, *v, d=None):
        """The dynamic header with a field changed."""
        d = patch(d or self.d, self.dh + off, fmt, *v)
        return put(d, self.dh, checksummed(d[self.dh:self.dh + 1024], H_CHECKSUM))

    def entry(self, i):
        return self.bat + 4 * i


def differencing(v, parent_uuid, parent_name="", locator=None, loc_len=None, loc_off=None):
    """`v` made a differencing disk of the parent `parent_uuid`: parent name
    (UTF-16BE) in the header, and a W2ru locator (a relative Windows path in
    UTF-16LE) in a sector put before the closing footer."""
    d = v.footer(F_TYPE, ">I", TYPE_DIFF)
    d = v.header(H_PARENT_UUID, "16s", parent_uuid, d=d)
    d = v.header(H_PARENT_NAME, "512s", parent_name.encode("utf-16-be"), d=d)
    if locator is None:
        return d
    pos = len(d) - SECTOR
    raw = locator.replace("/", "\\").encode("utf-16-le")
    d = d[:pos] + raw.ljust(SECTOR, b"\0") + d[pos:]
    return v.header(H_LOCATORS, ">4sIIIQ", W2RU, 1, len(raw) if loc_len is None else loc_len,
                    0, pos if loc_off is None else loc_off, d=d)


def generate(ctx):
    def emit(name, data, fault, expect="bad"):
        ctx.emit(f"vhd-{name}.vhd", data, FMT, fault, expect)

    # Truncations and the cases about blocks: a 4 MiB disk (force_size:
    # sized by current_size, not by CHS) with block 0 allocated, block 1 not.
    o = Vhd(ctx.template("vhd-one.vhd", FMT, "4M", opts="force_size=on",
                         writes=["write -P 0x11 0 64k"]))
    assert o.block == 2 * MiB and o.bat_entries == [4, 0xffffffff], "qemu's layout changed"
    block0 = o.bat_entries[0] * SECTOR
    b = {"dynamic header": o.dh, "inside the dynamic header": o.dh + 512, "BAT": o.bat,
         "bitmap of block 0": block0, "data of block 0": block0 + o.block // SECTOR // 8,
         "footer at the end (the file's last 512 bytes)": len(o.d) - SECTOR}
    ctx.truncations("vhd", o.d, FMT, "vhd", b)

    # Footer and header fields that do not depend on the blocks: a disk
    # with none allocated keeps these cases small.
    e = Vhd(ctx.template("vhd-empty.vhd", FMT, "4M", opts="force_size=on"))
    for name, data, fault in [
        ("size-max", e.footer(F_SIZE, ">Q", 2**64 - 1), "current size 2^64-1"),
        ("size-2pow63", e.footer(F_SIZE, ">Q", 2**63), "current size 2^63"),
        ("size-past-bat", e.footer(F_SIZE, ">Q", 8 * MiB),
         "current size 8 MiB, the BAT's 2 entries cover 4 MiB"),
        ("chs-huge", e.footer(F_CREATOR, "4s", b"vpc ",
                              d=e.footer(F_CHS, ">HBB", 65535, 16, 254)),
         "Virtual PC geometry 65535x16x254 (136 GB) over a BAT of 4 MiB"),
        ("checksum", patch(e.d, F_CHECKSUM, ">I", u32(e.d, F_CHECKSUM) ^ 1),
         "footer checksum wrong"),
        ("type-5", e.footer(F_TYPE, ">I", 5), "disk type 5"),
        ("type-fixed-at-0", e.footer(F_TYPE, ">I", 2),
         "footer copy at offset 0 says fixed (fixed disks have none)"),
        ("data-offset-past-eof", e.footer(F_DATA_OFFSET, ">Q", 2**40),
         "dynamic header offset past EOF"),
        ("data-offset-max", e.footer(F_DATA_OFFSET, ">Q", 2**64 - 1),
         "dynamic header offset 2^64-1"),
        ("data-offset-zero", e.footer(F_DATA_OFFSET, ">Q", 0),
         "dynamic header at offset 0: the footer copy has no 'cxsparse'"),
        ("data-offset-last-bytes", e.footer(F_DATA_OFFSET, ">Q", len(e.d) - 20),
         "dynamic header 20 bytes before EOF"),
        ("header-cookie", e.header(0, "8s", b"cxsparsf"), "dynamic header cookie damaged"),
        ("table-past-eof", e.header(H_TABLE, ">Q", 2**40), "BAT offset past EOF"),
        ("table-max", e.header(H_TABLE, ">Q", 2**64 - 4), "BAT offset 2^64-4 (+ its size wraps)"),
        ("table-at-footer", e.header(H_TABLE, ">Q", 0),
         "BAT read from the footer copy ('cone' as a sector number)"),
        ("table-runs-past-eof", e.header(H_TABLE, ">Q", len(e.d) - 4),
         "BAT starts 4 bytes before EOF"),
        ("entries-max", e.header(H_ENTRIES, ">I", 0xffffffff), "max table entries 0xffffffff"),
        ("entries-x4-wraps-32", e.header(H_ENTRIES, ">I", 0x40000000),
         "max table entries 2^30: the BAT's bytes (entries*4) wrap 32 bits to 0"),
        ("entries-zero", e.header(H_ENTRIES, ">I", 0), "max table entries 0"),
        ("entries-short", e.header(H_ENTRIES, ">I", 1),
         "one BAT entry for a disk of two blocks"),
        ("block-zero", e.header(H_BLOCK, ">I", 0), "block size 0"),
        ("block-three", e.header(H_BLOCK, ">I", 3), "block size 3"),
        ("block-odd", e.header(H_BLOCK, ">I", 3 * MiB), "block size 3 MiB, not a power of two"),
        ("block-256", e.header(H_BLOCK, ">I", 256), "block size 256, under a sector"),
        ("block-max", e.header(H_BLOCK, ">I", 0xffffffff), "block size 0xffffffff"),
        ("block-512-short-bat", e.header(H_BLOCK, ">I", 512),
         "block size 512: the BAT's 2 entries cover 1 KiB of a 4 MiB disk"),
    ]:
        emit(name, data, fault)

    # Block map entries.
    size = len(o.d)
    for name, off, v_, fault in [
        ("bat-past-eof", o.entry(0), 0x100000, "block 0 at sector 2^20, past EOF"),
        ("bat-max", o.entry(0), 0xfffffffe, "block 0 at sector 0xfffffffe"),
        ("bat-runs-past-eof", o.entry(0), size // SECTOR - 8,
         "block 0 starts 8 sectors before EOF: its bitmap and data run past it"),
        ("bat-at-footer", o.entry(0), 0,
         "block 0 at sector 0: its bitmap is the footer copy, its data the headers"),
        ("bat-at-header", o.entry(0), o.dh // SECTOR, "block 0 on the dynamic header"),
        ("bat-at-bat", o.entry(0), o.bat // SECTOR, "block 0 on the BAT itself"),
        ("bat-shared", o.entry(1), o.bat_entries[0], "blocks 0 and 1 share one block"),
    ]:
        emit(name, patch(o.d, off, ">I", v_), fault)
    emit("block-2pow31", o.header(H_BLOCK, ">I", 2**31),
         "block size 2 GiB: the allocated block runs past EOF")

    # Differencing disks.  qemu 7.2 reads one without its parent; we look
    # the parent up by its locators, in reach only, and check its UUID.  An
    # empty parent reads as zeros either way.
    pe = os.path.join(ctx.outside, "vhd-parent.vhd")
    ctx.qimg("create", "-q", "-f", FMT, "-o", "force_size=on", pe, "4M")
    puuid = Vhd(ctx.read(pe)).d[F_UUID:F_UUID + 16]
    emit("diff-parent-dotdot",
         differencing(o, puuid, "vhd-parent.vhd", "../outside/vhd-parent.vhd"),
         "differencing disk whose parent locator is '..\\outside\\vhd-parent.vhd'", "outside")
    emit("diff-parent-abs", differencing(o, puuid, "vhd-parent.vhd", pe),
         "differencing disk whose relative parent locator holds an absolute path outside src",
         "outside")
    own = e.d[F_UUID:F_UUID + 16]
    emit("diff-self", differencing(e, own, "vhd-diff-self.vhd", "vhd-diff-self.vhd"),
         "differencing disk whose parent (locator, name and UUID) is itself")
    for name, kw, fault in [
        ("locator-past-eof", dict(loc_off=2**40),
         "the parent locator's data offset is past EOF (the parent cannot be found)"),
        ("locator-len-huge", dict(loc_len=0xffffffff),
         "the parent locator's length is 0xffffffff (the parent cannot be found)"),
        ("locator-wraps", dict(loc_off=2**64 - 16),
         "the parent locator's offset + length wraps 2^64"),
    ]:
        emit("diff-" + name, differencing(e, puuid, "", "vhd-parent.vhd", **kw), fault)
    emit("diff-json",
         differencing(e, puuid, "", "json:{'driver':'file','filename':'/etc/hostname'}"),
         "differencing disk whose parent locator is a json: pseudo-name")
    # 8192 BAT entries all naming one block of a differencing disk: the
    # sector bitmaps kept per entry would add up to more than the file.
    r = Vhd(ctx.template("vhd-16g.vhd", FMT, "16G", opts="force_size=on",
                         writes=["write -P 0x11 0 64k"]))
    rep = put(r.d, r.bat, r.d[r.bat:r.bat + 4] * r.entries)
    emit("diff-bat-repeats", differencing(Vhd(rep), puuid),
         f"differencing disk whose {r.entries} BAT entries all name block 0")
    # A parent beside the child, but another disk (its UUID differs).
    os.makedirs(os.path.join(ctx.src, "vhd-diff-uuid"), exist_ok=True)
    ctx.qimg("create", "-q", "-f", FMT, "-o", "force_size=on",
             os.path.join(ctx.src, "vhd-diff-uuid", "parent.vhd"), "4M")
    ctx.emit("vhd-diff-uuid/x.vhd", differencing(e, puuid, "parent.vhd", "parent.vhd"), FMT,
             "the parent the locator names has another UUID than the child records")
