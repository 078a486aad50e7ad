"""Backing chains and references out of the source folder: loops, a chain
10 000 deep, backing and data files reached by absolute paths, "..",
symlinks and protocol or json: pseudo-names, and a raw backing file that
holds a qcow2 header (it must be read as raw, never probed)."""
import os

from common import put, u32, u64

M = 1 << 20
DEEP = 10000


def backing_name_at(data):
    return u64(data, 8), u32(data, 16)


def with_backing_name(data, name):
    """The image with its backing name replaced in place (the name area
    after the header extensions has room: qemu leaves the cluster free)."""
    off, _ = backing_name_at(data)
    raw = name.encode()
    out = put(data, off, raw)
    out = put(out, 16, len(raw).to_bytes(4, "big"))
    return out


def overlay(ctx, name, backing="PLACEHOLDER-BACKING-NAME-" + "x" * 200, fmt="qcow2", opts=None):
    """A small qcow2 overlay with one written cluster, bytes returned; its
    backing name is then swapped for the hostile one."""
    return ctx.template(name, "qcow2", 4 * M, opts, ["write -P 0x61 0 64k"],
                        backing=backing, backing_fmt=fmt)


def loops(ctx):
    t = overlay(ctx, "loop.qcow2")
    ctx.emit("chain-self.qcow2", with_backing_name(t, "chain-self.qcow2"), "qcow2",
             "backed by itself")
    for a, b in (("chain-ab-a", "chain-ab-b"), ("chain-ab-b", "chain-ab-a")):
        ctx.emit(f"{a}.qcow2", with_backing_name(t, f"{b}.qcow2"), "qcow2",
                 "backing chain loops through two files")
    names = ["chain-abc-a", "chain-abc-b", "chain-abc-c"]
    for i, n in enumerate(names):
        ctx.emit(f"{n}.qcow2", with_backing_name(t, names[(i + 1) % 3] + ".qcow2"), "qcow2",
                 "backing chain loops through three files")
    # through a symlink: the loop closes on a different name of the same file
    ctx.emit("chain-vialink.qcow2", with_backing_name(t, "chain-link.qcow2"), "qcow2",
             "backed by a symlink to itself")
    os.symlink("chain-vialink.qcow2", os.path.join(ctx.src, "chain-link.qcow2"))


def deep(ctx):
    """DEEP small overlays in src/deep/, d00000 -> d00001 -> ... -> a base
    without backing at the bottom; cluster_size=512 keeps each one a few KiB."""
    t = ctx.template("deep.qcow2", "qcow2", 1 * M, "cluster_size=512",
                     ["write -P 0x64 0 512"], backing="d00000.qcow2", backing_fmt="qcow2")
    d = os.path.join(ctx.src, "deep")
    os.makedirs(d)
    for i in range(DEEP):
        with open(os.path.join(d, f"d{i:05d}.qcow2"), "wb") as f:
            f.write(with_backing_name(t, f"d{i + 1:05d}.qcow2"))
    base = ctx.template("deepbase.qcow2", "qcow2", 1 * M, "cluster_size=512",
                        ["write -P 0x62 0 1M"])
    with open(os.path.join(d, f"d{DEEP:05d}.qcow2"), "wb") as f:
        f.write(base)
    ctx.record("deep/d00000.qcow2", "qcow2", f"backing chain {DEEP} images deep")


def outside(ctx):
    """References that qemu follows but that leave the source folder."""
    base = os.path.join(ctx.outside, "base.qcow2")
    ctx.qimg("create", "-q", "-f", "qcow2", base, str(4 * M))
    ctx.qio(base, "qcow2", "write -P 0x6f 64k 64k")
    t = overlay(ctx, "out.qcow2")
    ctx.emit("out-absolute.qcow2", with_backing_name(t, base), "qcow2",
             "backing file by absolute path outside the source folder", "outside")
    ctx.emit("out-dotdot.qcow2", with_backing_name(t, "../outside/base.qcow2"), "qcow2",
             "backing file through .. outside the source folder", "outside")
    os.symlink(base, os.path.join(ctx.src, "out-link-target.qcow2"))
    ctx.emit("out-symlink.qcow2", with_backing_name(t, "out-link-target.qcow2"), "qcow2",
             "backing file is a symlink in the folder to a file outside it", "outside")
    sub = os.path.join(ctx.src, "out-sub")
    os.makedirs(sub)
    os.symlink(ctx.outside, os.path.join(sub, "dirlink"))
    ctx.emit("out-sub/top.qcow2", with_backing_name(t, "dirlink/base.qcow2"), "qcow2",
             "backing file through a symlinked folder leading outside", "outside")
    # an external data file outside
    data_img = os.path.join(ctx.work, "df.qcow2")
    ctx.qimg("create", "-q", "-f", "qcow2", "-o",
             f"data_file={os.path.join(ctx.outside, 'data.raw')}", data_img, str(4 * M))
    ctx.qio(data_img, "qcow2", "write -P 0x64 0 64k")
    ctx.emit("out-datafile.qcow2", ctx.read(data_img), "qcow2",
             "external data file outside the source folder", "outside")


def pseudo(ctx):
    """Names that are not files: refused even with --allow-outside."""
    t = overlay(ctx, "pseudo.qcow2")
    for tag, name in (
            ("json", 'json:{"file":{"driver":"file","filename":"/etc/passwd"}}'),
            ("file-protocol", "file:/etc/passwd"),
            ("nbd", "nbd://127.0.0.1:10809/x"),
            ("etc-passwd", "/etc/passwd")):
        expect = "outside" if tag == "etc-passwd" else "bad"
        ctx.emit(f"pseudo-{tag}.qcow2", with_backing_name(t, name), "qcow2",
                 f"backing name {name}", expect)


def raw_backing(ctx):
    """A raw backing file whose bytes look like a qcow2 that is itself backed
    by /etc/passwd: with backing format raw, they are data, nothing more."""
    inner = ctx.template("inner.qcow2", "qcow2", 1 * M, None, ["write -P 0x69 0 4k"])
    inner = with_backing_name(inner, "/etc/passwd")
    with open(os.path.join(ctx.src, "rawbase.bin"), "wb") as f:
        f.write(inner + bytes(M - len(inner) % M if len(inner) % M else 0))
    t = overlay(ctx, "rawtop.qcow2", backing="rawbase.bin", fmt="raw")
    ctx.emit("raw-backing-looks-qcow2.qcow2", t, "qcow2",
             "raw backing file holding a qcow2 header (must not be probed)", "good")


def generate(ctx):
    loops(ctx)
    deep(ctx)
    outside(ctx)
    pseudo(ctx)
    raw_backing(ctx)
