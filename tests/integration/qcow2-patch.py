#!/usr/bin/env python3
"""Make a damaged copy of a valid qcow2 image (for the hostile-input tests).

usage: qcow2-patch.py IN OUT EDIT...
EDIT is FIELD=VALUE (VALUE in decimal or 0x hex) with FIELD one of the
header fields below, or:
  truncate=N      keep only the first N bytes
  l1_entry0=V     store V in the first L1 entry
  l2_entry0=V     store V in the first entry of the L2 table that L1[0] names
"""
import shutil
import struct
import sys

FIELDS = {  # name: (offset, struct format), big-endian
    "magic": (0, ">I"), "version": (4, ">I"),
    "backing_file_offset": (8, ">Q"), "backing_file_size": (16, ">I"),
    "cluster_bits": (20, ">I"), "size": (24, ">Q"), "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"), "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"), "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"), "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"), "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"), "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
}
OFFSET_MASK = 0x00FFFFFFFFFFFE00


def main():
    src, dst, edits = sys.argv[1], sys.argv[2], sys.argv[3:]
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for edit in edits:
            field, value = edit.split("=", 1)
            value = int(value, 0)
            if field == "truncate":
                f.truncate(value)
            elif field in ("l1_entry0", "l2_entry0"):
                f.seek(40)
                l1 = struct.unpack(">Q", f.read(8))[0]
                at = l1
                if field == "l2_entry0":
                    f.seek(l1)
                    at = struct.unpack(">Q", f.read(8))[0] & OFFSET_MASK
                    if at == 0:
                        sys.exit("qcow2-patch: L1[0] is empty")
                f.seek(at)
                f.write(struct.pack(">Q", value))
            elif field in FIELDS:
                off, fmt = FIELDS[field]
                f.seek(off)
                f.write(struct.pack(fmt, value))
            else:
                sys.exit(f"qcow2-patch: unknown field {field}")


if __name__ == "__main__":
    main()
