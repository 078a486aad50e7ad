#!/usr/bin/env bash
# A guest ext4 through the view: mkfs.ext4 -d of a tree of a few thousand
# small files, converted to qcow2, mounted with imgfs, the raw view attached
# read-only to a loop device and mounted; diff -r against the tree.
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img mkfs.ext4 losetup python3 diff || finish
need_build setup || finish

mkdir -p src tree
# ~3000 files in 3 levels of folders, sizes 0..12 KiB, varied content
# (text, random bytes, runs of one byte), a few empty folders and symlinks.
python3 - tree <<'PY' || fail tree/build "python could not write the tree"
import os, random, sys
root = sys.argv[1]
r = random.Random(7)
n = 0
for a in range(12):
    for b in range(10):
        d = os.path.join(root, f"dir{a:02d}", f"sub{b}")
        os.makedirs(d, exist_ok=True)
        for i in range(25):
            kind = r.randrange(4)
            size = r.choice((0, 1, 17, 511, 512, 513, 4095, 4096, 4097, r.randrange(12288)))
            if kind == 0:
                data = r.randbytes(size)
            elif kind == 1:
                data = (b"file %d line %d\n" % (n, r.randrange(10**6)) * (size // 10 + 1))[:size]
            elif kind == 2:
                data = bytes([r.randrange(256)]) * size
            else:
                data = b"\0" * (size // 2) + r.randbytes(size - size // 2)
            with open(os.path.join(d, f"f{i:03d}.{('bin','txt','dat','z')[kind]}"), "wb") as f:
                f.write(data)
            n += 1
    os.makedirs(os.path.join(root, f"dir{a:02d}", "empty"), exist_ok=True)
    os.symlink(f"sub0/f000.bin", os.path.join(root, f"dir{a:02d}", "link"))
print(n, "files", file=sys.stderr)
PY

if truncate -s 64M work.raw && mkfs.ext4 -q -N 8192 -d tree -L imgfs-test work.raw &&
    qemu-img convert -O qcow2 work.raw src/guest.qcow2 && rm work.raw; then
    pass build
else
    fail build "mkfs.ext4 -d / qemu-img convert failed"
    finish
fi

if ! mount_imgfs src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
pass mount

dev=$(loop_attach mnt/guest.raw) || {
    fail losetup "losetup -r -f --show mnt/guest.raw failed"
    finish
}
pass losetup
mkdir -p guest
LOOP_MNTS+=("$T/guest")
if tmo mount -o ro "$dev" guest 2>"$T/err.txt"; then
    pass loop-mount
else
    fail loop-mount "mount -o ro $dev failed: $(head -c 300 "$T/err.txt")"
    finish
fi
if tmo diff -r --no-dereference tree guest >"$T/diff.txt" 2>&1; then
    pass diff
else
    # lost+found is the one entry mkfs adds
    if ! grep -v '^Only in guest: lost+found$' "$T/diff.txt" | grep -q .; then
        pass diff
    else
        fail diff "guest tree differs: $(head -n 5 "$T/diff.txt" | tr '\n' ' ')"
    fi
fi
count=$(find guest -type f | wc -l)
if [ "$count" -ge 3000 ]; then pass file-count; else fail file-count "only $count files in the guest"; fi
if tmo umount guest && loop_detach "$dev"; then
    pass unmount
else
    fail unmount "could not unmount the guest or detach $dev"
fi
if alive "$IMGFS_PID"; then pass daemon-alive; else fail daemon-alive "imgfs died"; fi
finish
