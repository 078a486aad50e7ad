#!/usr/bin/env python3
"""Compare imgctl's JSON with qemu-img's.

usage: imgctl-json-cmp.py info OURS QEMU [--actual]
       imgctl-json-cmp.py map OURS QEMU [full|data]

info: every field both print must agree, except the names that depend on how
the path was given (filename, full-backing-filename) and actual-size (host file
system; compared only with --actual).  A list (--backing-chain) is compared
layer by layer.
map full: the entries must be equal, except "offset" on entries that are not
data (qemu gives allocated zero clusters one; our extents carry none).
map data: only which ranges are data, and their depth and present flag.
Exit 0 when they agree; otherwise prints the first difference and exits 1.
"""
import json
import sys

PATHLIKE = {"filename", "full-backing-filename"}


def cmp_info(ours, qemu, actual, where="image"):
    if isinstance(qemu, list) or isinstance(ours, list):
        if not (isinstance(qemu, list) and isinstance(ours, list)) or len(ours) != len(qemu):
            return f"{where}: chain length differs"
        for i, (o, q) in enumerate(zip(ours, qemu)):
            err = cmp_info(o, q, actual, f"layer {i}")
            if err:
                return err
        return None
    for key in sorted(set(ours) & set(qemu)):
        if key in PATHLIKE or (key == "actual-size" and not actual):
            continue
        if ours[key] != qemu[key]:
            return f"{where}: {key}: ours {ours[key]!r} qemu {qemu[key]!r}"
    for key in ("virtual-size", "format"):
        if key not in ours:
            return f"{where}: {key} missing"
    return None


def data_runs(entries):
    runs = []
    for e in entries:
        key = (e["depth"], e["present"], e["data"]) if e["data"] else (None, None, False)
        if runs and runs[-1][2] == key and runs[-1][0] + runs[-1][1] == e["start"]:
            runs[-1][1] += e["length"]
        else:
            runs.append([e["start"], e["length"], key])
    return [r for r in runs if r[2][2]]


def strip_offsets(entries):
    """Drop offsets of non-data entries, then merge what that made alike
    (qemu splits a zero run where its host offsets stop being contiguous)."""
    out = []
    for e in entries:
        e = dict(e)
        if not e["data"]:
            e.pop("offset", None)
        last = out[-1] if out else None
        if (last and not e["data"] and last["start"] + last["length"] == e["start"] and
                {k: v for k, v in last.items() if k not in ("start", "length")} ==
                {k: v for k, v in e.items() if k not in ("start", "length")}):
            last["length"] += e["length"]
        else:
            out.append(e)
    return out


def cmp_map(ours, qemu, mode):
    if mode == "data":
        a, b = data_runs(ours), data_runs(qemu)
    else:
        a, b = strip_offsets(ours), strip_offsets(qemu)
    for x, y in zip(a, b):
        if x != y:
            return f"ours {x} qemu {y}"
    if len(a) != len(b):
        return f"{len(a)} entries against qemu's {len(b)}"
    return None


def main():
    what, ours, qemu = sys.argv[1:4]
    extra = sys.argv[4:]
    with open(ours) as f:
        o = json.load(f)
    if qemu.endswith(".xz"):
        import lzma
        with lzma.open(qemu, "rt") as f:
            q = json.load(f)
    else:
        with open(qemu) as f:
            q = json.load(f)
    if what == "info":
        err = cmp_info(o, q, "--actual" in extra)
    else:
        err = cmp_map(o, q, extra[0] if extra else "full")
    if err:
        print(err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
