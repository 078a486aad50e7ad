#!/usr/bin/env python3
"""Print the data ranges of a `qemu-img map --output=json` answer as
"START LENGTH" lines (decimal), entries with "data": true, adjacent ones
merged: the same text that tests/tools/seekmap prints for a file.

usage: qemu-map-ranges.py [MAP.json]   (stdin when no file is given)
"""
import json
import sys


def main():
    src = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    with src:
        entries = json.load(src)
    runs = []
    for e in sorted(entries, key=lambda e: e["start"]):
        if not e.get("data") or e["length"] == 0:
            continue
        start, end = e["start"], e["start"] + e["length"]
        if runs and runs[-1][1] == start:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    for start, end in runs:
        print(f"{start} {end - start}")


if __name__ == "__main__":
    main()
