"""Shared by the hostile-image generators: make valid templates with qemu-img,
then write broken copies of them into the source folder and list each in the
manifest with what it breaks and what is expected of imgctl and imgfs.

Expectations (the `expect` column of manifest.tsv):
  bad      the image is broken: at least one of `imgctl info`, `imgctl check`
           and `imgctl convert` must fail, each failure one line naming the file
  outside  valid, but it reaches outside the source folder: refused by default,
           read right (as qemu-img reads it) with --allow-outside
  good     valid, however odd: read exactly as qemu-img reads it
"""
import os
import shutil
import struct
import subprocess


class Ctx:
    def __init__(self, out):
        self.out = os.path.abspath(out)
        self.src = os.path.join(self.out, "src")         # what gets mounted
        self.outside = os.path.join(self.out, "outside")  # beside it, never mounted
        self.work = os.path.join(self.out, "work")        # templates
        for d in (self.src, self.outside, self.work):
            os.makedirs(d, exist_ok=True)
        self.cases = []

    # ---- qemu -------------------------------------------------------------

    def qimg(self, *args, cwd=None):
        subprocess.run(["qemu-img", *args], check=True, cwd=cwd,
                       stdout=subprocess.DEVNULL)

    def qio(self, path, fmt, *cmds):
        args = ["qemu-io", "-f", fmt]
        for c in cmds:
            args += ["-c", c]
        subprocess.run(args + [path], check=True, stdout=subprocess.DEVNULL)

    def template(self, name, fmt, size, opts=None, writes=(), backing=None,
                 backing_fmt=None):
        """A valid image in work/ made by qemu-img, written by qemu-io;
        returns its bytes."""
        path = os.path.join(self.work, name)
        args = ["create", "-q", "-f", fmt]
        if opts:
            args += ["-o", opts]
        self.qimg(*args, path, str(size))
        if writes:
            self.qio(path, fmt, *writes)
        # the backing name last: qemu-io would want to open it
        if backing:
            self.qimg("rebase", "-u", "-f", fmt, "-b", backing, "-F", backing_fmt, path)
        return self.read(path)

    def map_json(self, path, fmt):
        import json
        r = subprocess.run(["qemu-img", "map", "-f", fmt, "--output=json", path],
                           check=True, capture_output=True, text=True)
        return json.loads(r.stdout)

    # ---- cases ------------------------------------------------------------

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def emit(self, name, data, fmt, fault, expect="bad"):
        """Write `data` as src/NAME and record the case."""
        path = os.path.join(self.src, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.record(name, fmt, fault, expect)

    def record(self, name, fmt, fault, expect="bad"):
        """Record a case whose files the caller wrote itself."""
        assert "\t" not in fault and "\n" not in fault, fault
        assert expect in ("bad", "outside", "good"), expect
        assert not any(c[0] == name for c in self.cases), "duplicate case " + name
        self.cases.append((name, fmt, expect, fault))

    def truncations(self, stem, data, fmt, ext, boundaries):
        """One case per structure boundary: the file cut at its start.
        `boundaries` maps a label to an offset; offsets at or past the end,
        or below 8 (not even a magic), are left out, duplicates kept once."""
        seen = set()
        for label, off in sorted(boundaries.items(), key=lambda kv: kv[1]):
            if off < 8 or off >= len(data) or off in seen:
                continue
            seen.add(off)
            self.emit(f"{stem}-trunc-{off:x}.{ext}", data[:off], fmt,
                      f"truncated at 0x{off:x} ({label})")

    def write_manifest(self):
        with open(os.path.join(self.out, "manifest.tsv"), "w") as f:
            for c in self.cases:
                f.write("\t".join(c) + "\n")


# ---- bytes --------------------------------------------------------------

def patch(data, off, fmt, *values):
    """A copy of `data` with struct format `fmt` (e.g. '>Q') packed at `off`."""
    b = bytearray(data)
    if off + struct.calcsize(fmt) > len(b):
        b.extend(bytes(off + struct.calcsize(fmt) - len(b)))
    struct.pack_into(fmt, b, off, *values)
    return bytes(b)


def put(data, off, raw):
    """A copy of `data` with the bytes `raw` at `off`."""
    b = bytearray(data)
    if off + len(raw) > len(b):
        b.extend(bytes(off + len(raw) - len(b)))
    b[off:off + len(raw)] = raw
    return bytes(b)


def u16(data, off, big=True):
    return struct.unpack_from(">H" if big else "<H", data, off)[0]


def u32(data, off, big=True):
    return struct.unpack_from(">I" if big else "<I", data, off)[0]


def u64(data, off, big=True):
    return struct.unpack_from(">Q" if big else "<Q", data, off)[0]


def copy(src, dst):
    shutil.copyfile(src, dst)
