#!/usr/bin/env python3
"""Turn ../shared/testdata/real/manifest.tsv into the plan of test-real.sh.

usage: real-plan.py REAL_DIR
Prints tab-separated lines:
  fetch  STORED IMAGE SHA256_IMAGE     copy STORED into the test folder and
                                       decompress it to IMAGE (same layout)
  check  IMAGE VIEW SHA256_RAW SIZE MAP_JSON CLUSTER
                                       VIEW must exist and read as the manifest says
  maybe  IMAGE VIEW SHA256_RAW SIZE    VIEW may be absent; if shown it must read so
  refuse IMAGE VIEW REASON             VIEW absent or failing; a log line names
                                       IMAGE and matches REASON (grep -E)
  hidden IMAGE VIEW                    a companion: VIEW must not exist

Which rows and what to expect (DESIGN.md, "The mount"):
- qcow2 rows with qemu_status ok: the content probes as qcow2, so the file
  is shown as its name without the last suffix plus ".raw"; it must read as
  sha256_raw and map as map_json.
- raw rows: a file whose content probes raw is shown only when its name ends
  in a raw-image suffix (.img .raw .iso .dd .bin).  qemu/grub_mbr.raw is
  shown (as grub_mbr.raw).  dissect/fixed.vhd has no raw suffix and probes raw
  by content only: while no driver claims it, it is not shown; a VHD driver
  that reads its footer may show it as fixed.raw, and then it must read as
  qemu's `-f vpc` result given in the notes.  The Parallels bundle's
  plain.hdd.0.{GUID}.hds has no raw suffix either: not shown on its own; if
  a view of it appears it must read as sha256_raw.
- companions (backing files are rows themselves; data-file.bin, the external
  data file of data-file.qcow2) are fetched; data-file.bin, which has a raw
  suffix, must still not be shown: it belongs to data-file.qcow2.
- the cases qemu cannot read (cirros-snapshot1/2: missing backing file;
  invalid-qcow-large-memory.img: L1 size too big) must fail cleanly: absent,
  or stat/open/read fails, and the daemon's log names the file.  The .img
  one is in fact a VMDK sparse extent (KDMV magic) with an absurd capacity:
  its content probes as an image, so despite its raw suffix it must not come
  back as a raw view of its bytes.
"""
import csv
import json
import os
import re
import sys

RAW_SUFFIXES = (".img", ".raw", ".iso", ".dd", ".bin")
# image: what the log line must say besides the name (the missing backing
# file; the oversized table)
REFUSE = {"cdi/cirros-snapshot1.qcow2": "cirros\\.raw",
          "cdi/cirros-snapshot2.qcow2": "cirros\\.raw",
          "cdi/invalid-qcow-large-memory.img": "L1|large|absurd|too big|capacity|size"}


def image_name(stored, compression):
    if compression in ("xz", "bz2") and stored.endswith("." + compression):
        return stored[: -len(compression) - 1]
    return stored


def view_name(image):
    d, base = os.path.split(image)
    if not base.endswith(".raw"):
        dot = base.rfind(".")
        if dot > 0:
            base = base[:dot]
        base += ".raw"
    return os.path.join(d, base)


def main():
    real = sys.argv[1]
    with open(os.path.join(real, "manifest.tsv"), newline="") as f:
        lines = [l for l in f if not l.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    by_image = {}
    for r in rows:
        by_image[image_name(r["file"], r["stored_compression"])] = r
    fetched = set()
    out = []

    def fetch(stored):
        if stored in fetched:
            return
        fetched.add(stored)
        comp = "xz" if stored.endswith(".xz") else "bz2" if stored.endswith(".bz2") else "-"
        img = image_name(stored, comp)
        r = by_image.get(img)
        out.append(("fetch", stored, img, r["sha256_image"] if r else "-"))
        if r and r["companions"] != "-":
            for c in r["companions"].split(","):
                fetch(c)

    for r in rows:
        img = image_name(r["file"], r["stored_compression"])
        fmt, status = r["format"], r["qemu_status"]
        if img in REFUSE:
            fetch(r["file"])
            out.append(("refuse", img, view_name(img), REFUSE[img]))
            continue
        if fmt not in ("qcow2", "raw") or status != "ok":
            continue
        fetch(r["file"])
        cluster = 4096
        info = os.path.join(real, r["info_json"])
        if r["info_json"].endswith(".json") and os.path.exists(info):
            cluster = json.load(open(info)).get("cluster-size", 4096)
        mapj = os.path.join(real, r["map_json"])
        if fmt == "qcow2" or img.lower().endswith(RAW_SUFFIXES):
            out.append(("check", img, view_name(img), r["sha256_raw"], r["virtual_size"], mapj, str(cluster)))
        else:
            m = re.search(r"with -f vpc: virtual_size=(\d+) sha256_raw=([0-9a-f]{64})", r["notes"])
            if m:
                out.append(("maybe", img, view_name(img), m.group(2), m.group(1)))
            else:
                out.append(("maybe", img, view_name(img), r["sha256_raw"], r["virtual_size"]))
    # companions that are not rows of their own must stay hidden
    for stored in sorted(fetched):
        comp = "xz" if stored.endswith(".xz") else "bz2" if stored.endswith(".bz2") else "-"
        img = image_name(stored, comp)
        if img not in by_image:
            out.append(("hidden", img, os.path.join(os.path.dirname(img), os.path.basename(img) + ".raw")))
    for o in out:
        print("\t".join(o))


if __name__ == "__main__":
    main()
