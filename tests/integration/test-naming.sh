#!/usr/bin/env bash
# What the mount shows: names (disk.qcow2 -> disk.raw; a.qcow2 + a.img ->
# a.qcow2.raw + a.img.raw; a .raw keeps its name), non-images hidden, folders
# mirrored, an external data file hidden, a backing file shown on its own;
# attributes from the image file (size, mtime, st_blksize = cluster size,
# stable inode numbers); and the mount is read-only (EROFS).
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io jq python3 || finish
need_build setup || finish

M=$((1 << 20))
mkdir -p src/sub/deeper src/emptydir
qemu-img create -q -f qcow2 src/disk.qcow2 16M &&
    write_patterns src/disk.qcow2 qcow2 65536 $((16 * M)) || fail disk/build "qemu failed"
# a.qcow2 and a.img would both be a.raw: each keeps its full name
qemu-img create -q -f qcow2 -o cluster_size=4096 src/a.qcow2 8M &&
    qio src/a.qcow2 qcow2 "write -P 0xaa 4096 8192" || fail a.qcow2/build "qemu failed"
truncate -s 4M src/a.img && qio src/a.img raw "write -P 0xbb 0 4096" || fail a.img/build "qemu failed"
# raw that is already called .raw
head -c 512 /dev/urandom >src/grub.raw
# backing file and overlay: both shown
qemu-img create -q -f qcow2 src/base.qcow2 8M &&
    qio src/base.qcow2 qcow2 "write -P 0x01 0 1M" &&
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/top.qcow2 &&
    qio src/top.qcow2 qcow2 "write -P 0x02 512K 4096" || fail chain/build "qemu failed"
# external data file with a raw suffix: must not be shown on its own
(cd src && qemu-img create -q -f qcow2 -o data_file=ext-data.img ext.qcow2 8M) &&
    qio src/ext.qcow2 qcow2 "write -P 0xee 1M 64K" || fail ext/build "qemu failed"
# non-images
printf 'just some notes\nnothing to see\n' >src/notes.txt
printf 'README\n' >src/README
head -c 100000 /dev/urandom >src/blob
# sub-folders
qemu-img create -q -f qcow2 src/sub/inner.qcow2 4M &&
    qio src/sub/inner.qcow2 qcow2 "write -P 0x33 0 4096" || fail inner/build "qemu failed"
truncate -s 2M src/sub/deeper/x.img && qio src/sub/deeper/x.img raw "write -P 0x44 1M 512" ||
    fail x/build "qemu failed"
printf 'text\n' >src/sub/deeper/y.txt
touch -d '2001-02-03 04:05:06' src/disk.qcow2

for n in disk a.qcow2 a.img grub base top ext inner x; do
    case $n in
        a.qcow2) f=src/a.qcow2 ;;
        a.img) f=src/a.img ;;
        grub) f=src/grub.raw ;;
        inner) f=src/sub/inner.qcow2 ;;
        x) f=src/sub/deeper/x.img ;;
        *) f=src/$n.qcow2 ;;
    esac
    ref_image "$n" "$f"
done

sum_before=$(cat src/*.qcow2 src/*.img src/*.raw | sha256sum)

if ! mount_imgfs src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
pass mount

expect_listing() {
    local dir=$1 want=$2 got
    got=$(tmo ls -A "mnt/$dir" 2>&1 | tr '\n' ' ')
    if [ "$got" = "$want" ]; then
        pass "listing:${dir:-/}"
    else
        fail "listing:${dir:-/}" "ls -A mnt/$dir gives '$got', want '$want'"
    fi
}
expect_listing "" "a.img.raw a.qcow2.raw base.raw disk.raw emptydir ext.raw grub.raw sub top.raw "
expect_listing sub "deeper inner.raw "
expect_listing sub/deeper "x.raw "
expect_listing emptydir ""

# Looking up a hidden name must fail too, not only the listing.
for h in notes.txt notes.raw README blob blob.raw ext-data.img ext-data.raw a.raw disk.qcow2 sub/deeper/y.txt; do
    if tmo stat "mnt/$h" >/dev/null 2>&1; then
        fail "hidden:$h" "mnt/$h exists"
    else
        pass "hidden:$h"
    fi
done
if [ -d mnt/sub ] && [ ! -L mnt/sub ]; then pass sub-is-dir; else fail sub-is-dir "mnt/sub is not a folder"; fi

# The right bytes under each name (a.qcow2.raw is a.qcow2, not a.img).
check_view disk mnt/disk.raw 65536 "sha map stat"
check_view a.qcow2 mnt/a.qcow2.raw 4096 "sha map stat"
check_view a.img mnt/a.img.raw 4096 "sha map stat"
check_view grub mnt/grub.raw 4096 "sha map stat"
check_view base mnt/base.raw 65536 "sha map"
check_view top mnt/top.raw 65536 "sha map"
check_view ext mnt/ext.raw 65536 "sha map stat"
check_view inner mnt/sub/inner.raw 65536 "sha map"
check_view x mnt/sub/deeper/x.raw 4096 "sha map"

# Attributes: mtime of the image file, st_blksize = cluster size, a regular
# file, inode numbers stable.
got=$(stat -c %Y mnt/disk.raw 2>&1)
want=$(stat -c %Y src/disk.qcow2)
if [ "$got" = "$want" ]; then pass mtime; else fail mtime "mnt/disk.raw mtime $got, image file has $want"; fi
got=$(stat -c %o mnt/disk.raw 2>&1)
if [ "$got" = 65536 ]; then pass blksize; else fail blksize "st_blksize of disk.raw is $got, cluster size is 65536"; fi
got=$(stat -c %o mnt/a.qcow2.raw 2>&1)
if [ "$got" = 4096 ]; then pass blksize-4k; else fail blksize-4k "st_blksize of a.qcow2.raw is $got, cluster size is 4096"; fi
if [ -f mnt/disk.raw ]; then pass regular-file; else fail regular-file "mnt/disk.raw is not a regular file"; fi
i1=$(stat -c %i mnt/sub/inner.raw 2>&1)
ls -laR mnt >/dev/null 2>&1
i2=$(stat -c %i mnt/sub/inner.raw 2>&1)
if [ "$i1" = "$i2" ]; then pass inode-stable; else fail inode-stable "inode of sub/inner.raw went from $i1 to $i2"; fi

# Read-only: every way of writing fails with EROFS.
python3 - "$T/mnt" >"$T/ro.txt" 2>&1 <<'PY'
import errno, os, sys
mnt = sys.argv[1]
v = os.path.join(mnt, "disk.raw")
def attempt(name, fn):
    try:
        fn()
        print(f"{name} succeeded")
    except OSError as e:
        print(f"{name} {errno.errorcode.get(e.errno, e.errno)}")
attempt("open-wronly", lambda: os.close(os.open(v, os.O_WRONLY)))
attempt("open-rdwr", lambda: os.close(os.open(v, os.O_RDWR)))
attempt("truncate", lambda: os.truncate(v, 0))
attempt("create", lambda: os.close(os.open(os.path.join(mnt, "new.raw"), os.O_WRONLY | os.O_CREAT, 0o644)))
attempt("unlink", lambda: os.unlink(v))
attempt("rename", lambda: os.rename(v, os.path.join(mnt, "other.raw")))
attempt("mkdir", lambda: os.mkdir(os.path.join(mnt, "d")))
attempt("chmod", lambda: os.chmod(v, 0o600))
attempt("utime", lambda: os.utime(v, (0, 0)))
PY
while read -r op res; do
    if [ "$res" = EROFS ]; then
        pass "readonly:$op"
    else
        fail "readonly:$op" "$op on the mount gave '$res', want EROFS"
    fi
done <"$T/ro.txt"
[ -s "$T/ro.txt" ] || fail readonly "the python write attempts printed nothing"
if [ "$(cat src/*.qcow2 src/*.img src/*.raw | sha256sum)" = "$sum_before" ]; then
    pass source-intact
else
    fail source-intact "the image files in src changed while mounted read-only"
fi
finish
