"""Broken qcow2 images: every header field that sizes or places something,
L1/L2/refcount entries, compressed clusters, and truncation at every
structure boundary."""
import zlib

from common import patch, put, u32, u64

CLUSTER = 65536
OFF_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
HUGE = 1 << 40          # far past the end of any test file
M = 1 << 20


class Layout:
    """Where qemu put things in one image."""

    def __init__(self, data):
        self.data = data
        self.cluster_bits = u32(data, 20)
        self.l1_size = u32(data, 36)
        self.l1 = u64(data, 40)
        self.reftable = u64(data, 48)
        self.reftable_clusters = u32(data, 56)
        self.snapshots = u64(data, 64)
        self.header_length = u32(data, 100)
        self.l2s = [u64(data, self.l1 + 8 * i) & OFF_MASK for i in range(self.l1_size)]
        self.l2s = [o for o in self.l2s if o]
        self.refblocks = [u64(data, self.reftable + 8 * i) & OFF_MASK
                          for i in range(self.reftable_clusters * CLUSTER // 8)]
        self.refblocks = [o for o in self.refblocks if o]
        self.l2_entries = []    # (index in the first L2, entry) of allocated ones
        for i in range(CLUSTER // 8):
            e = u64(data, self.l2s[0] + 8 * i)
            if e & ~COPIED:
                self.l2_entries.append((i, e))

    def extensions(self):
        """(offset, type, length) of each header extension."""
        off, out = self.header_length, []
        while off + 8 <= CLUSTER:
            typ, ln = u32(self.data, off), u32(self.data, off + 4)
            out.append((off, typ, ln))
            if typ == 0:
                break
            off += 8 + (ln + 7) // 8 * 8
        return out

    def first(self, kind):
        """Index and entry of the first L2 entry of a kind."""
        for i, e in self.l2_entries:
            compressed = bool(e & COMPRESSED)
            if kind == "compressed" and compressed:
                return i, e
            if kind == "data" and not compressed and e & OFF_MASK:
                return i, e
            if kind == "zero" and not compressed and e & 1:
                return i, e
        raise LookupError(kind)

    def compressed_host(self, e):
        """Host offset and sector-count span of a compressed entry."""
        x = 62 - (self.cluster_bits - 8)
        off = e & ((1 << x) - 1)
        nsect = ((e >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return off, nsect


def make_template(ctx):
    # data, a zero cluster, compressed clusters, data past 4 GiB-in-guest
    # terms is not needed: 16 MiB keeps everything in one L2 table
    return ctx.template(
        "t.qcow2", "qcow2", 16 * M, "cluster_size=65536",
        ["write -P 0x11 0 128k", "write -z 1M 64k", "write -c -P 0x33 2M 64k",
         "write -c -P 0x34 2176k 64k", "write -P 0x55 5M 64k"])


def header_cases(ctx, t, lay):
    def e(name, off, fmt, value, fault):
        ctx.emit(f"qcow2-{name}.qcow2", patch(t, off, fmt, value), "qcow2", fault)

    e("version-1", 4, ">I", 1, "version 1")
    e("version-99", 4, ">I", 99, "version 99")
    for bits in (0, 8, 22, 31, 63, 255):
        e(f"cluster-bits-{bits}", 20, ">I", bits, f"cluster_bits {bits} out of range")
    e("size-2e64", 24, ">Q", 2**64 - 1, "virtual size 2^64-1 (L1 too small, overflows)")
    e("size-2e63", 24, ">Q", 2**63, "virtual size 2^63")
    e("size-past-l1", 24, ">Q", 1 << 50, "virtual size needs a bigger L1 than l1_size")
    e("crypt-7", 32, ">I", 7, "unknown crypt method 7")
    for n in (0x7FFFFFFF, 0xFFFFFFFF, 0x20000000, 0x10000000):
        e(f"l1-size-{n:x}", 36, ">I", n, f"l1_size 0x{n:x} (x8 overflows or past EOF)")
    e("l1-zero", 36, ">I", 0, "l1_size 0 for a non-empty disk")
    e("l1-past-eof", 40, ">Q", HUGE, "L1 table past the end of the file")
    e("l1-unaligned", 40, ">Q", lay.l1 + 8, "L1 table offset not cluster aligned")
    e("l1-on-header", 40, ">Q", 0, "L1 table at offset 0 (the header)")
    e("l1-on-reftable", 40, ">Q", lay.reftable, "L1 table overlaps the refcount table")
    e("l1-offset-wraps", 40, ">Q", 2**64 - CLUSTER, "L1 offset + size wraps around 2^64")
    e("reftable-past-eof", 48, ">Q", HUGE, "refcount table past the end of the file")
    e("reftable-unaligned", 48, ">Q", lay.reftable + 8, "refcount table not cluster aligned")
    e("reftable-zero", 48, ">Q", 0, "refcount table at offset 0")
    for n in (0, 0xFFFFFFFF, 0x800000):
        e(f"reftable-clusters-{n:x}", 56, ">I", n, f"refcount_table_clusters 0x{n:x}")
    e("snapshots-many", 60, ">I", 0xFFFFFFFF, "nb_snapshots 2^32-1")
    t2 = patch(t, 60, ">I", 1)
    ctx.emit("qcow2-snapshot-past-eof.qcow2", patch(t2, 64, ">Q", HUGE), "qcow2",
             "one snapshot whose table lies past the end of the file")
    ctx.emit("qcow2-snapshot-unaligned.qcow2", patch(t2, 64, ">Q", lay.l1 + 3), "qcow2",
             "snapshot table offset not 8-byte aligned")
    e("incompat-unknown", 72, ">Q", 1 << 40, "unknown incompatible feature bit")
    e("incompat-datafile", 72, ">Q", 4, "external data file bit without a data file name")
    for order in (7, 255):
        e(f"refcount-order-{order}", 96, ">I", order, f"refcount_order {order}")
    for hl in (0, 103, 1000000, 0xFFFFFFFF):
        e(f"header-length-{hl:x}", 100, ">I", hl, f"header_length 0x{hl:x}")
    e("compression-type-9", 104, ">B", 9, "unknown compression type 9 (with the bit clear)")
    t3 = patch(t, 8, ">Q", HUGE)
    ctx.emit("qcow2-backing-name-past-eof.qcow2", patch(t3, 16, ">I", 100), "qcow2",
             "backing file name past the end of the file")
    t4 = patch(t, 8, ">Q", 512)
    for n in (1024, 0xFFFFFFFF):
        ctx.emit(f"qcow2-backing-name-{n:x}.qcow2", patch(t4, 16, ">I", n), "qcow2",
                 f"backing file name of 0x{n:x} bytes")
    ext = [x for x in lay.extensions() if x[1] != 0]
    if ext:
        off = ext[0][0]
        e("hdr-ext-huge", off + 4, ">I", 0xFFFFFFFF, "header extension length 2^32-1")
        e("hdr-ext-past-cluster", off + 4, ">I", CLUSTER, "header extension past the header cluster")


def table_cases(ctx, t, lay):
    l1e = lay.l1
    l2 = lay.l2s[0]

    def l1(name, value, fault):
        ctx.emit(f"qcow2-l1e-{name}.qcow2", patch(t, l1e, ">Q", value), "qcow2", fault)

    l1("past-eof", COPIED | HUGE, "L1 entry: L2 table past the end of the file")
    l1("unaligned", COPIED | (l2 + 512), "L1 entry: L2 table not cluster aligned")
    l1("on-l1", COPIED | lay.l1, "L1 entry: L2 table is the L1 table")
    l1("on-reftable", COPIED | lay.reftable, "L1 entry: L2 table is the refcount table")
    l1("reserved", COPIED | l2 | 0x1FF, "L1 entry with reserved bits set")

    di, de = lay.first("data")
    ci, ce = lay.first("compressed")
    data_host = de & OFF_MASK

    def l2e(name, index, value, fault):
        ctx.emit(f"qcow2-l2e-{name}.qcow2", patch(t, l2 + 8 * index, ">Q", value), "qcow2",
                 fault)

    l2e("past-eof", di, COPIED | HUGE, "L2 entry: data cluster past the end of the file")
    l2e("unaligned", di, COPIED | (data_host + 512), "L2 entry: data not cluster aligned")
    l2e("on-l1", di, COPIED | lay.l1, "L2 entry: data is the L1 table")
    l2e("on-itself", di, COPIED | l2, "L2 entry: data is its own L2 table")
    l2e("reserved", di, COPIED | data_host | (1 << 56), "L2 entry with reserved bits 56-61")
    # a second entry sharing the first one's cluster: refcount 1, used twice
    free = max(i for i, _ in lay.l2_entries) + 1
    l2e("shared", free, de, "two L2 entries share one data cluster")

    cho, cns = lay.compressed_host(ce)
    x = 62 - (lay.cluster_bits - 8)
    l2e("compressed-past-eof", ci, COMPRESSED | HUGE, "compressed cluster past the end of the file")
    l2e("compressed-max-sectors", ci,
        COMPRESSED | (((1 << (lay.cluster_bits - 8)) - 1) << x) | cho,
        "compressed cluster spanning the most sectors, past the end")
    # the stream itself: garbage, cut short, and one that expands past the cluster
    garbage = bytes((i * 7 + 3) & 0xFF for i in range(cns * 512 - (cho % 512)))
    ctx.emit("qcow2-compressed-garbage.qcow2", put(t, cho, garbage), "qcow2",
             "compressed cluster: the stream is garbage")
    ctx.emit("qcow2-compressed-cut.qcow2", put(t, cho + 20, bytes(cns * 512 - 20 - cho % 512)),
             "qcow2", "compressed cluster: the stream is cut short")
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    big = co.compress(b"\x42" * (4 * CLUSTER)) + co.flush()
    assert len(big) < cns * 512 - cho % 512
    ctx.emit("qcow2-compressed-expands.qcow2", put(t, cho, big), "qcow2",
             "compressed cluster: the stream inflates to four clusters")

    # refcounts: the refcount table naming a block past EOF or on the header
    def rt(name, value, fault):
        ctx.emit(f"qcow2-refblock-{name}.qcow2", patch(t, lay.reftable, ">Q", value), "qcow2",
                 fault)

    rt("past-eof", HUGE, "refcount block past the end of the file")
    rt("on-header", 0x200, "refcount block not cluster aligned, inside the header")
    rt("on-l1", lay.l1, "refcount block is the L1 table")
    # every refcount zero: all clusters in use look free
    rb = lay.refblocks[0]
    ctx.emit("qcow2-refcounts-zero.qcow2", put(t, rb, bytes(CLUSTER)), "qcow2",
             "every refcount zero while clusters are in use")


def zstd_cases(ctx):
    t = ctx.template("z.qcow2", "qcow2", 4 * M, "compression_type=zstd",
                     ["write -c -P 0x44 0 64k"])
    lay = Layout(t)
    ci, ce = lay.first("compressed")
    cho, cns = lay.compressed_host(ce)
    garbage = bytes((i * 13 + 5) & 0xFF for i in range(cns * 512 - cho % 512))
    ctx.emit("qcow2-zstd-garbage.qcow2", put(t, cho, garbage), "qcow2",
             "zstd compressed cluster: the stream is garbage")
    ctx.emit("qcow2-zstd-cut.qcow2", put(t, cho + 12, bytes(cns * 512 - 12 - cho % 512)),
             "qcow2", "zstd compressed cluster: the stream is cut short")


def truncation_cases(ctx, t, lay):
    b = {"v2 header end": 72, "v3 header end": 104, "header_length": lay.header_length,
         "L1 table": lay.l1, "L1 table middle": lay.l1 + 4, "refcount table": lay.reftable}
    for off, typ, ln in lay.extensions():
        b[f"header extension 0x{typ:x}"] = off
    for n, o in enumerate(lay.refblocks):
        b[f"refcount block {n}"] = o
    for n, o in enumerate(lay.l2s):
        b[f"L2 table {n}"] = o
        b[f"L2 table {n} middle"] = o + 8
    for i, e in lay.l2_entries:
        if e & COMPRESSED:
            ho, ns = lay.compressed_host(e)
            b[f"compressed cluster {i}"] = ho
            b[f"compressed cluster {i} middle"] = ho + 16
        elif e & OFF_MASK:
            b[f"data cluster {i}"] = e & OFF_MASK
            b[f"data cluster {i} middle"] = (e & OFF_MASK) + 4096
    ctx.truncations("qcow2", t, "qcow2", "qcow2", b)


def generate(ctx):
    t = make_template(ctx)
    lay = Layout(t)
    header_cases(ctx, t, lay)
    table_cases(ctx, t, lay)
    zstd_cases(ctx)
    truncation_cases(ctx, t, lay)
