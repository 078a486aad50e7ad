"""Hostile VMDK images: broken copies of a monolithicSparse disk, of a
streamOptimized disk and of descriptors that qemu-img made.

Offsets are those of the hosted sparse extent header (VMware "Virtual Disk
Format 1.1"; formats/vmdk/sparse.c decodes the same fields).  The sparse
template is 64 MiB, so that its grain directory has two entries (one grain
table covers 512 grains of 64 KiB = 32 MiB), and holds four grains."""
import os
import re
import zlib

from common import patch, put, u32, u64

FMT = "vmdk"
SECTOR = 512
# Header fields, little-endian.
VERSION, FLAGS, CAPACITY, GRAIN, DESC_OFF, DESC_SIZE = 4, 8, 12, 20, 28, 36
GTES, RGD, GD, OVERHEAD, CHECK_BYTES, COMPRESS = 44, 48, 56, 64, 73, 77
GD_AT_END = 2**64 - 1
FLAG_ZERO_GRAIN, FLAG_COMPRESSED, FLAG_MARKERS = 1 << 2, 1 << 16, 1 << 17
MARKER_FOOTER, MARKER_SIZE = 3, 12


def le32(d, off):
    return u32(d, off, big=False)


def le64(d, off):
    return u64(d, off, big=False)


class Sparse:
    """Where things are in a hosted sparse extent, found as a reader finds
    them: header -> grain directory -> grain tables -> grains."""

    def __init__(self, d):
        self.capacity, self.grain = le64(d, CAPACITY), le64(d, GRAIN)
        self.gtes = le32(d, GTES)
        self.desc, self.desc_size = le64(d, DESC_OFF), le64(d, DESC_SIZE)
        self.rgd, self.gd = le64(d, RGD), le64(d, GD)
        n = -(-self.capacity // (self.grain * self.gtes))
        self.gts = [le32(d, self.gd * SECTOR + 4 * i) for i in range(n)]
        self.rgts = [le32(d, self.rgd * SECTOR + 4 * i) for i in range(n)] if self.rgd else []
        self.grains = []   # (guest grain number, sector), in guest order
        for i, gt in enumerate(self.gts):
            for j in range(self.gtes if gt else 0):
                s = le32(d, gt * SECTOR + 4 * j)
                if s > 1:
                    self.grains.append((i * self.gtes + j, s))

    def gte(self, grain):
        """Byte offset of the grain table entry of guest grain `grain`."""
        return self.gts[grain // self.gtes] * SECTOR + 4 * (grain % self.gtes)


def set_gte(d, sp, grain, sector):
    return patch(d, sp.gte(grain), "<I", sector)


def embedded_desc(d, sp):
    return d[sp.desc * SECTOR:(sp.desc + sp.desc_size) * SECTOR].split(b"\0")[0].decode()


def with_desc(d, sp, text):
    """`d` with its embedded descriptor replaced (it must fit its sectors)."""
    raw = text.encode()
    assert len(raw) < sp.desc_size * SECTOR
    return put(d, sp.desc * SECTOR, raw.ljust(sp.desc_size * SECTOR, b"\0"))


def descriptor(base, lines, create_type="monolithicFlat"):
    """qemu's monolithicFlat descriptor `base` with other extent lines."""
    head, rest = base.split("# Extent description\n")
    ddb = rest.split("\n\n", 1)[1]   # drop qemu's own extent line
    head = re.sub(r'createType="[^"]*"', f'createType="{create_type}"', head)
    return head + "# Extent description\n" + "".join(s + "\n" for s in lines) + "\n" + ddb


def write_files(ctx, folder, files):
    """Write {name: bytes or ('symlink', target) or 'fifo'} into src/folder."""
    d = os.path.join(ctx.src, folder)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        p = os.path.join(d, name)
        if isinstance(data, tuple):
            os.symlink(data[1], p)
        elif data == "fifo":
            os.mkfifo(p)
        else:
            with open(p, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)


def gen_sparse(ctx):
    d = ctx.template("vmdk-sparse.vmdk", FMT, "64M", writes=[
        "write -P 0x11 0 64k", "write -P 0x22 1M 128k", "write -P 0x33 40M 64k"])
    sp = Sparse(d)
    assert len(sp.gts) == 2 and len(sp.grains) == 4, "qemu's layout changed"
    first, last = sp.grains[0], sp.grains[-1]
    size = len(d)

    b = {"header end: embedded descriptor": sp.desc * SECTOR,
         "inside the embedded descriptor": (sp.desc + sp.desc_size // 2) * SECTOR,
         "redundant grain directory": sp.rgd * SECTOR,
         "grain directory": sp.gd * SECTOR}
    b.update({f"redundant grain table {i}": s * SECTOR for i, s in enumerate(sp.rgts)})
    b.update({f"grain table {i}": s * SECTOR for i, s in enumerate(sp.gts)})
    b.update({f"grain {g}": s * SECTOR for g, s in sp.grains})
    ctx.truncations("vmdk-sparse", d, FMT, "vmdk", b)

    def emit(name, data, fault, expect="bad"):
        ctx.emit(f"vmdk-{name}.vmdk", data, FMT, fault, expect)

    # Header fields: sizes that overflow, grain sizes out of range, offsets
    # past the end of the file.
    for name, off, fmt, v, fault in [
        ("capacity-max", CAPACITY, "<Q", 2**64 - 1, "capacity 2^64-1 sectors"),
        ("capacity-wraps", CAPACITY, "<Q", 2**55 + sp.capacity,
         "capacity 2^55+N sectors: capacity*512 wraps to the template's size"),
        ("capacity-2pow46", CAPACITY, "<Q", 2**46 + 1, "capacity just past the 2^55-byte cap"),
        ("gtes-zero", GTES, "<I", 0, "num_gtes_per_gt 0 (division by zero)"),
        ("gtes-max", GTES, "<I", 0xffffffff, "num_gtes_per_gt 0xffffffff"),
        ("gtes-513", GTES, "<I", 513, "num_gtes_per_gt 513 (qemu's limit is 512)"),
        ("grain-zero", GRAIN, "<Q", 0, "grain size 0"),
        ("grain-one", GRAIN, "<Q", 1,
         "grain size 1 sector: the grain directory grows over the grain tables"),
        ("grain-three", GRAIN, "<Q", 3, "grain size 3 sectors, not a power of two"),
        ("grain-4096", GRAIN, "<Q", 4096, "grain size 2 MiB, past the 1 MiB limit"),
        ("grain-2pow32", GRAIN, "<Q", 2**32, "grain size 2^32 sectors"),
        ("grain-2pow63", GRAIN, "<Q", 2**63, "grain size 2^63 sectors: grain*gtes wraps to 0"),
        ("version-4", VERSION, "<I", 4, "sparse header version 4"),
        ("compress-7", COMPRESS, "<H", 7, "unknown compression algorithm 7"),
        ("check-bytes", CHECK_BYTES, "4s", b"\n \n\n", "newline check bytes damaged"),
        ("desc-past-eof", DESC_OFF, "<Q", size // SECTOR + 10,
         "embedded descriptor offset past EOF"),
        ("desc-size-zero", DESC_SIZE, "<Q", 0, "embedded descriptor of 0 sectors"),
        ("desc-size-max", DESC_SIZE, "<Q", 2**64 - 1,
         "embedded descriptor of 2^64-1 sectors (offset+size wraps)"),
        ("overhead-past-eof", OVERHEAD, "<Q", 2**40, "grain area (overhead) starts past EOF"),
        ("gd-past-eof", GD, "<Q", size // SECTOR + 1, "grain directory offset past EOF"),
        ("gd-at-eof-edge", GD, "<Q", size // SECTOR, "grain directory starts at EOF"),
        ("gd-offset-max", GD, "<Q", 2**63, "grain directory offset 2^63 sectors (*512 wraps)"),
        ("gd-zero", GD, "<Q", 0, "grain directory offset 0 (no grain directory)"),
        ("gd-at-end-no-footer", GD, "<Q", GD_AT_END,
         "grain directory 'at the end' in a file that has no footer"),
        ("rgd-past-eof", RGD, "<Q", size // SECTOR + 1,
         "redundant grain directory offset past EOF"),
    ]:
        emit(name, patch(d, off, fmt, v), fault)

    # Grain directory sizes that overflow: with 1-sector grains and one entry
    # per table, the directory has `capacity` entries; *4 wraps 32 bits.
    tiny = patch(patch(d, GRAIN, "<Q", 1), GTES, "<I", 1)
    emit("gd-entries-x4-wraps-32", patch(tiny, CAPACITY, "<Q", 2**30),
         "2^30 grain directory entries: entries*4 wraps 32 bits to 0")
    emit("gd-entries-2pow46", patch(tiny, CAPACITY, "<Q", 2**46),
         "2^46 grain directory entries: entries*4 is 2^48 bytes")

    # Grain directory and grain table entries past EOF or into metadata.
    gd1 = sp.gd * SECTOR + 4
    emit("gt-past-eof", patch(d, gd1, "<I", size // SECTOR + 1),
         "grain directory entry 1 points past EOF")
    emit("gt-max", patch(d, gd1, "<I", 0xffffffff), "grain directory entry 1 is 0xffffffff")
    emit("gt-at-descriptor", patch(d, gd1, "<I", sp.desc),
         "grain table 1 is the embedded descriptor (text read as entries)")
    emit("gt-shared", patch(d, gd1, "<I", sp.gts[0]),
         "grain directory entries 0 and 1 name the same grain table")
    emit("gt-at-grain", patch(d, gd1, "<I", first[1]),
         "grain table 1 lies inside grain data (0x11 bytes as entries)")
    emit("gte-past-eof", set_gte(d, sp, first[0], size // SECTOR + 1),
         "grain table entry of grain 0 points past EOF")
    emit("gte-max", set_gte(d, sp, first[0], 0xffffffff),
         "grain table entry of grain 0 is 0xffffffff")
    emit("gte-last-sector", set_gte(d, sp, last[0], size // SECTOR - 1),
         "last grain starts at the file's last sector: 63 of its sectors are past EOF")
    emit("gte-at-descriptor", set_gte(d, sp, first[0], sp.desc),
         "grain 0 is the embedded descriptor, GD and grain tables (zero-grain flag unset)")
    emit("gte-at-gd", set_gte(d, sp, first[0], sp.gd), "grain 0 lies on the grain directory")
    emit("gte-at-own-gt", set_gte(d, sp, first[0], sp.gts[0]),
         "grain 0 lies on its own grain table")
    emit("gte-shared", set_gte(d, sp, 1, first[1]),
         "grains 0 and 1 share one host grain")
    emit("cowd-magic", put(d, 0, b"COWD"), "ESX COWD magic on a hosted sparse header")
    emit("compress-on-plain", patch(d, COMPRESS, "<H", 1),
         "deflate compression on a disk of plain grains (each read as a zlib stream)")
    zeroable = patch(d, FLAGS, "<I", le32(d, FLAGS) | FLAG_ZERO_GRAIN)
    emit("gte-zeroed", set_gte(zeroable, sp, first[0], 1),
         "grain 0 'zeroed' (entry 1 with the zero-grain flag): reads as zeros", "good")
    # A header of capacity 0 makes the embedded descriptor a list of extents
    # (QEMU reads it so): this one names the file itself.
    name = "vmdk-capacity-zero-self.vmdk"
    text = re.sub(r'RW \d+ SPARSE "[^"]*"', f'RW {sp.capacity} SPARSE "{name}"',
                  embedded_desc(d, sp))
    ctx.emit(name, patch(with_desc(d, sp, text), CAPACITY, "<Q", 0), FMT,
             "header capacity 0; its embedded descriptor names this file as its extent")
    no_cid = re.sub(r"^CID=\w+\n", "", embedded_desc(d, sp), flags=re.M)
    emit("desc-no-cid", with_desc(d, sp, no_cid),
         "monolithic sparse file whose embedded descriptor has no CID (a bare extent)")


def gen_stream(ctx):
    """streamOptimized: every grain is a marker (lba u64, size u32) and a
    zlib stream."""
    ctx.template("vmdk-stream.raw", "raw", "4M", writes=[
        "write -P 0x11 0 64k", "write -P 0x22 1M 128k", "write -P 0x33 4032k 64k"])
    ctx.qimg("convert", "-O", FMT, "-o", "subformat=streamOptimized",
             "vmdk-stream.raw", "vmdk-stream.vmdk", cwd=ctx.work)
    d = ctx.read(os.path.join(ctx.work, "vmdk-stream.vmdk"))
    sp = Sparse(d)
    assert len(sp.grains) == 4 and le32(d, FLAGS) & FLAG_COMPRESSED, "qemu's layout changed"
    g0 = sp.grains[0][1] * SECTOR          # first grain's marker
    gb = sp.grain * SECTOR

    b = {"grain directory": sp.gd * SECTOR, "redundant grain directory": sp.rgd * SECTOR}
    b.update({f"grain table {i}": s * SECTOR for i, s in enumerate(sp.gts)})
    b.update({f"marker of grain {g}": s * SECTOR for g, s in sp.grains})
    b.update({f"deflate data of grain {g}": s * SECTOR + MARKER_SIZE for g, s in sp.grains})
    ctx.truncations("vmdk-stream", d, FMT, "vmdk", b)

    def emit(name, data, fault, expect="bad"):
        ctx.emit(f"vmdk-stream-{name}.vmdk", data, FMT, fault, expect)

    def regrain(raw, fault, name):
        """Grain 0's zlib stream replaced by `raw` (it must fit its slot)."""
        assert MARKER_SIZE + len(raw) <= SECTOR
        emit(name, patch(put(d, g0 + MARKER_SIZE, raw.ljust(SECTOR - MARKER_SIZE, b"\0")),
                         g0 + 8, "<I", len(raw)), fault)

    z = zlib.compress(bytes([0x55]) * gb, 9)
    regrain(z[:2] + b"\xff" * 8 + z[10:], "grain 0: corrupt deflate stream", "bad-deflate")
    regrain(z[:len(z) // 2], "grain 0: deflate stream cut in the middle", "cut-deflate")
    regrain(z[:-4] + b"\0\0\0\0", "grain 0: zlib checksum wrong", "bad-adler")
    regrain(zlib.compress(bytes([0x55]) * (2 * gb), 9),
            "grain 0 inflates to two grains", "inflates-past-grain")
    regrain(zlib.compress(bytes([0x55]) * (gb + 1), 9),
            "grain 0 inflates to a grain and one byte", "inflates-one-past")
    regrain(zlib.compress(bytes([0x55]) * 1000, 9),
            "grain 0 inflates to 1000 bytes, short of a grain", "inflates-short")
    emit("marker-past-eof", patch(d, g0 + 8, "<I", len(d) - g0),
         "grain 0's marker size runs past EOF")
    emit("marker-huge", patch(d, g0 + 8, "<I", 0xffffffff), "grain 0's marker size 0xffffffff")
    emit("marker-zero", patch(d, g0 + 8, "<I", 0), "grain 0's marker size 0")
    emit("gte-past-eof", set_gte(d, sp, sp.grains[0][0], len(d) // SECTOR + 1),
         "grain table entry of a compressed grain points past EOF")
    emit("gte-at-gd", set_gte(d, sp, sp.grains[0][0], sp.gd),
         "compressed grain 0 is read from the grain directory (no zlib stream there)")
    emit("gte-shared", set_gte(d, sp, 1, sp.grains[0][1]),
         "grains 0 and 1 share one compressed grain")
    emit("no-marker-flag", patch(d, FLAGS, "<I", le32(d, FLAGS) & ~FLAG_MARKERS),
         "grains have markers but the header says none (markers read as zlib)")

    # A stream whose header says "grain directory at the end" and whose
    # footer (marker, header copy, end-of-stream marker) says where: valid.
    def footer(gd):
        marker = patch(bytes(SECTOR), 8, "<II", 0, MARKER_FOOTER)
        return marker + patch(d[:SECTOR], GD, "<Q", gd) + bytes(SECTOR)
    body = patch(d, GD, "<Q", GD_AT_END)
    emit("footer", body + footer(sp.gd), "grain directory found through the footer", "good")
    emit("footer-gd-at-end", body + footer(GD_AT_END),
         "the footer, too, puts the grain directory at the end")
    emit("footer-gd-past-eof", body + footer(len(d) // SECTOR + 100),
         "the footer puts the grain directory past EOF")
    emit("footer-no-eos", (body + footer(sp.gd))[:-SECTOR],
         "the end-of-stream marker after the footer is cut off")
    emit("footer-bad-marker", patch(body + footer(sp.gd), len(d) + 12, "<I", 7),
         "the footer marker has type 7")


def gen_descriptors(ctx):
    """Descriptor files and the extents they name."""
    ctx.qimg("create", "-q", "-f", FMT, "-o", "subformat=monolithicFlat",
             "vmdk-flat.vmdk", "512K", cwd=ctx.work)
    base = ctx.read(os.path.join(ctx.work, "vmdk-flat.vmdk")).decode()
    data = ctx.template("vmdk-data.raw", "raw", "512K", writes=[
        "write -P 0x41 0 256k", "write -P 0x42 384k 64k"])
    grain = ctx.template("vmdk-grain.vmdk", FMT, "64K", writes=["write -P 0x5a 0 64k"])
    flat = 'RW 1024 FLAT "{}" 0'

    def case(folder, lines, fault, expect="bad", files=None, create_type="monolithicFlat"):
        """src/FOLDER/x.vmdk (or src/FOLDER.vmdk without files) naming `lines`."""
        text = descriptor(base, lines, create_type)
        if files is None:
            ctx.emit(folder + ".vmdk", text.encode(), FMT, fault, expect)
            return
        write_files(ctx, folder, dict(files, **{"x.vmdk": text}))
        ctx.record(folder + "/x.vmdk", FMT, fault, expect)

    # Thousands of extents.  2000 keep qemu-img's reading under ten seconds
    # (it looks extents up one by one); 5000 and 10001 need no qemu.
    case("vmdk-many-flat", [f'RW 8 FLAT "data.raw" {(i * 8) % 1024}' for i in range(2000)],
         "2000 FLAT extents of 4 KiB into one file", "good", {"data.raw": data})
    case("vmdk-many-sparse-last-bad",
         ['RW 128 SPARSE "grain.vmdk"'] * 4999 + ['RW 128 SPARSE "cut.vmdk"'],
         "5000 SPARSE extents, the last one a sparse file cut after its header",
         files={"grain.vmdk": grain, "cut.vmdk": grain[:SECTOR]})
    case("vmdk-many-flat-last-missing",
         [f'RW 8 FLAT "data.raw" {(i * 8) % 1024}' for i in range(4999)]
         + ['RW 8 FLAT "missing.raw" 0'],
         "5000 FLAT extents, the last one names a missing file", files={"data.raw": data})
    case("vmdk-too-many-extents", ['RW 1 FLAT "data.raw" 0'] * 10001,
         "10001 extents, past the 10000 a disk may have", files={"data.raw": data})

    # Sizes and offsets.
    case("vmdk-extents-wrap-2pow64", ["RW 9223372036854775808 ZERO"] * 2,
         "two ZERO extents of 2^63 sectors: the sum wraps 2^64 to 0")
    case("vmdk-extent-size-2pow64", ["RW 18446744073709551616 ZERO"],
         "extent of 2^64 sectors (does not fit 64 bits)")
    case("vmdk-extents-sum-2pow56", ["RW 70368744177664 ZERO"] * 2,
         "two extents of 2^46 sectors: 2^56 bytes in all")
    case("vmdk-extent-size-zero", ['RW 0 FLAT "data.raw" 0'], "extent of 0 sectors",
         files={"data.raw": data})
    case("vmdk-flat-offset-past-eof", ['RW 1024 FLAT "data.raw" 1000000'],
         "FLAT extent starts 488 MiB into a 512 KiB file", files={"data.raw": data})
    case("vmdk-flat-offset-max", ['RW 1024 FLAT "data.raw" 18014398509481983'],
         "FLAT extent offset 2^54-1 sectors (*512 overflows)", files={"data.raw": data})
    case("vmdk-sparse-not-kdmv", ['RW 1024 SPARSE "data.raw"'],
         "SPARSE extent that is a raw file", files={"data.raw": data})
    case("vmdk-ext-missing", [flat.format("missing.raw")], "extent file does not exist",
         files={})
    case("vmdk-ext-directory", ['RW 8 FLAT "." 0'], "extent is the folder itself", files={})
    case("vmdk-ext-fifo", [flat.format("pipe")],
         "extent is a FIFO (opening it blocks until a writer comes)", files={"pipe": "fifo"})
    case("vmdk-ext-bad-type", ['RW 1024 VMFSRAW "data.raw"'], "extent type VMFSRAW",
         files={"data.raw": data})
    case("vmdk-ext-no-quote", ['RW 1024 FLAT "data.raw 0'], "extent name without closing quote")
    case("vmdk-ext-flat-no-offset", ['RW 1024 FLAT "data.raw"'], "FLAT extent without offset")
    case("vmdk-no-extents", [], "descriptor without extent lines")
    case("vmdk-createtype-unknown", [flat.format("data.raw")], "createType 'custom'",
         create_type="custom", files={"data.raw": data})
    big = descriptor(base, [flat.format("data.raw")]) + "#" * (1 << 20) + "\n"
    write_files(ctx, "vmdk-desc-too-big", {"x.vmdk": big, "data.raw": data})
    ctx.record("vmdk-desc-too-big/x.vmdk", FMT, "descriptor of more than 1 MiB")

    # Names that leave the source folder.  qemu-img follows plain paths, so
    # they are valid images that we refuse by default; pseudo-names are not
    # files at all.
    out = lambda name, raw: open(os.path.join(ctx.outside, name), "wb").write(raw)
    out("vmdk-ext-abs.raw", data)
    case("vmdk-ext-abs", [flat.format(os.path.join(ctx.outside, "vmdk-ext-abs.raw"))],
         "extent is an absolute path outside src", "outside")
    out("vmdk-ext-dotdot.raw", data)
    case("vmdk-ext-dotdot", [flat.format("../outside/vmdk-ext-dotdot.raw")],
         "extent '../outside/...'", "outside")
    out("vmdk-ext-sparse-dotdot.vmdk", grain)
    case("vmdk-ext-sparse-dotdot", ['RW 128 SPARSE "../outside/vmdk-ext-sparse-dotdot.vmdk"'],
         "SPARSE extent '../outside/...'", "outside")
    out("vmdk-ext-symlink.raw", data)
    case("vmdk-ext-symlink", [flat.format("data.raw")],
         "extent is a symlink in src to a file outside it", "outside",
         {"data.raw": ("symlink", "../../outside/vmdk-ext-symlink.raw")})
    case("vmdk-ext-json", [flat.format("json:{'driver':'file','filename':'/etc/hostname'}")],
         "extent is a json: pseudo-name")
    case("vmdk-ext-nbd", [flat.format("nbd://127.0.0.1:10809/export")],
         "extent is an nbd:// URL")
    case("vmdk-ext-file-proto", [flat.format("file:/etc/hostname")],
         "extent is a file: protocol name")


def gen_parents(ctx):
    """parentFileNameHint: a delta's parent outside src, or itself."""
    parent = os.path.join(ctx.outside, "vmdk-parent.vmdk")
    ctx.qimg("create", "-q", "-f", FMT, parent, "4M")
    ctx.qio(parent, FMT, "write -P 0x61 0 4M")
    for name, hint in [("vmdk-parent-abs.vmdk", parent),
                       ("vmdk-parent-dotdot.vmdk", "../outside/vmdk-parent.vmdk")]:
        ctx.qimg("create", "-q", "-f", FMT, "-b", hint, "-F", FMT, name, cwd=ctx.src)
        ctx.qio(os.path.join(ctx.src, name), FMT, "write -P 0x62 1M 64k")
        ctx.record(name, FMT, f"parentFileNameHint {hint} lies outside src", "outside")

    # The delta made in work/ with a parent beside it, then rewritten.
    ctx.qimg("create", "-q", "-f", FMT, "vmdk-base.vmdk", "4M", cwd=ctx.work)
    ctx.qimg("create", "-q", "-f", FMT, "-b", "vmdk-base.vmdk", "-F", FMT,
             "vmdk-delta.vmdk", cwd=ctx.work)
    d = ctx.read(os.path.join(ctx.work, "vmdk-delta.vmdk"))
    sp = Sparse(d)
    text = embedded_desc(d, sp)
    cid = re.search(r"\nCID=(\w+)", text).group(1)

    def emit(name, new_text, fault):
        ctx.emit(name, with_desc(d, sp, new_text), FMT, fault)
    name = "vmdk-parent-self.vmdk"
    emit(name, re.sub(r'parentFileNameHint="[^"]*"', f'parentFileNameHint="{name}"',
                      re.sub(r"parentCID=\w+", f"parentCID={cid}", text)),
         "parentFileNameHint names the file itself, parentCID its own CID")
    emit("vmdk-parent-json.vmdk",
         re.sub(r'parentFileNameHint="[^"]*"',
                "parentFileNameHint=\"json:{'driver':'file','filename':'/etc/hostname'}\"",
                text), "parentFileNameHint is a json: pseudo-name")
    emit("vmdk-parent-missing.vmdk", text, "parentFileNameHint names a missing file")
    # Parent present beside the delta, but with another CID.
    os.makedirs(os.path.join(ctx.src, "vmdk-parent-cid"), exist_ok=True)
    ctx.qimg("create", "-q", "-f", FMT, os.path.join(ctx.src, "vmdk-parent-cid",
                                                      "vmdk-base.vmdk"), "4M")
    with open(os.path.join(ctx.src, "vmdk-parent-cid", "x.vmdk"), "wb") as f:
        f.write(d)
    ctx.record("vmdk-parent-cid/x.vmdk", FMT, "parentCID does not match the parent's CID")


def generate(ctx):
    gen_sparse(ctx)
    gen_stream(ctx)
    gen_descriptors(ctx)
    gen_parents(ctx)
