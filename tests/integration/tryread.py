#!/usr/bin/env python3
"""tryread.py PATH: look a view up, open it and read it to the end.

Prints one line and exits 0:
  absent            not in its folder's listing and not found by name
  listed-absent     in the listing, but stat/open says ENOENT
  error STAGE ERRNO message   stat/open/read failed (STAGE = stat|open|read)
  ok SIZE           read SIZE bytes without an error
"""
import errno
import os
import sys

path = sys.argv[1]
d, name = os.path.split(path)
listed = name in os.listdir(d or ".")
stage = "stat"
try:
    os.stat(path)
    stage = "open"
    fd = os.open(path, os.O_RDONLY)
    stage = "read"
    total = 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        total += len(b)
    os.close(fd)
    print(f"ok {total}")
except OSError as e:
    if e.errno == errno.ENOENT and stage in ("stat", "open"):
        print("listed-absent" if listed else "absent")
    else:
        print(f"error {stage} {errno.errorcode.get(e.errno, e.errno)} {e.strerror}")
