#!/usr/bin/env bash
# Faults while serving (issue 5, item 6): the host file under a mounted view
# fails or changes.  Reads must give EIO for the affected range (never wrong
# bytes, never zeros, never an early end of file), the rest of the view keeps
# reading exactly as `qemu-img convert` says, the daemon stays up, and the
# fault is logged naming the file.
#
#   eio       faultfs (tests/tools/faultfs.c) fails reads of chosen host bytes:
#             a data cluster of qcow2, raw, vmdk, vdi and vpc images, a
#             compressed qcow2 cluster, a qcow2 L2 table; imgfs mounted on
#             top of the faultfs mount
#   truncate  a qcow2 (and the base of a chain) cut short under an open
#             handle; a raw image cut short; both grown
#   delete    an image deleted under an open handle
#   replace   a different image renamed over one, with no handle open and
#             with one held across the replacement
#   backing   a backing file removed under an open overlay, and renamed away
#             before the overlay is opened
#
# Reads are judged by rr.py (below) against qemu's raw conversion, range by
# range: "ok", "eof N", "differ N" or "error ERRNO N" (N = bytes read before).
# Waits of $CACHE_WAIT seconds outlast imgfs's attribute/entry cache time (1 s)
# so that the kernel asks the daemon again; nothing asserts a timing.
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io jq python3 truncate || finish
need_build setup || finish
FAULTFS=$BUILD/tools/faultfs
if [ ! -x "$FAULTFS" ]; then
    fail setup "$FAULTFS is missing (run make)"
    finish
fi

M=$((1 << 20))
K=1024
CACHE_WAIT=1.5
# Data of every test image, in MiB: [0,1) [2,3) [4,5) [8,10) [15,16) of 16.
REGIONS=("0:$M" "$((2 * M)):$M" "$((4 * M)):$M" "$((8 * M)):$((2 * M))" "$((15 * M)):$M")
# Every 1 MiB of the 16 MiB, data or hole.
ALL_MIB=()
for ((i = 0; i < 16; i++)); do
    ALL_MIB+=("$((i * M)):$M")
done

# ---------------------------------------------------------------------------
# Helpers (written into $T: the test owns no other file).

# mkpat.py OUT SIZE OFF:LEN...: a sparse raw file with data in the ranges.
# Every 4 KiB block is 512 random bytes and a repeated tag: unique (a block
# read from the wrong place shows) yet compressible (for qcow2 -c).
cat >"$T/mkpat.py" <<'EOF'
import os, sys
out, size = sys.argv[1], int(sys.argv[2])
with open(out, "wb") as f:
    f.truncate(size)
    for r in sys.argv[3:]:
        off, ln = (int(x) for x in r.split(":"))
        f.seek(off)
        for b in range(off, off + ln, 4096):
            f.write(os.urandom(512) + (b"%012x" % b) * 298 + b"\0" * 8)
EOF

# rr.py VIEW REF MODE OFF:LEN...: read each range of VIEW and compare it
# with the same bytes of REF (a raw file); one line "OFF:LEN OUTCOME" each:
#   ok              every byte read and equal to REF
#   eof N           a read returned 0 (end of file) after N good bytes
#   differ N        byte N of the range differs from REF
#   error ERRNO N   a read failed after N good bytes
#   openerr ERRNO   the open failed
# MODE: buffered (one fresh open), direct (one fresh O_DIRECT open) or fd:N
# (a descriptor the caller holds open).  Reads of up to 1 MiB (the kernel
# then asks imgfs for the whole range at once), into page-aligned memory.
cat >"$T/rr.py" <<'EOF'
import errno, mmap, os, sys
view, ref, mode = sys.argv[1:4]
name = lambda e: errno.errorcode.get(e, str(e))
try:
    if mode.startswith("fd:"):
        fd = int(mode[3:])
    else:
        fd = os.open(view, os.O_RDONLY | (os.O_DIRECT if mode == "direct" else 0))
except OSError as e:
    for r in sys.argv[4:]:
        print(r, "openerr", name(e.errno))
    sys.exit(0)
CH = 1 << 20
buf = mmap.mmap(-1, CH)
with open(ref, "rb") as f:
    for r in sys.argv[4:]:
        off, length = (int(x) for x in r.split(":"))
        f.seek(off)
        want = f.read(length)
        want += b"\0" * (length - len(want))
        done, res = 0, "ok"
        while done < length:
            n = min(CH, length - done)
            mv = memoryview(buf)[:n]
            try:
                got = os.preadv(fd, [mv], off + done)
            except OSError as e:
                res = "error %s %d" % (name(e.errno), done)
                break
            if got == 0:
                res = "eof %d" % done
                break
            chunk = bytes(mv[:got])
            if chunk != want[done:done + got]:
                i = next(i for i in range(got) if chunk[i] != want[done + i])
                res = "differ %d" % (done + i)
                break
            done += got
        print(r, res)
EOF

# qloc.py IMG GUEST: where a qcow2 keeps guest offset GUEST: "L2 HOST LEN"
# (L2 table offset, host offset of the cluster's bytes, their length: a
# compressed cluster's compressed bytes).
cat >"$T/qloc.py" <<'EOF'
import struct, sys
img, guest = sys.argv[1], int(sys.argv[2])
MASK = 0x00FFFFFFFFFFFE00
with open(img, "rb") as f:
    h = f.read(48)
    cb = struct.unpack(">I", h[20:24])[0]
    l1 = struct.unpack(">Q", h[40:48])[0]
    cs = 1 << cb
    f.seek(l1 + 8 * (guest >> (2 * cb - 3)))
    l2 = struct.unpack(">Q", f.read(8))[0] & MASK
    f.seek(l2 + 8 * ((guest >> cb) & (cs // 8 - 1)))
    e = struct.unpack(">Q", f.read(8))[0]
    if e & (1 << 62):
        x = 62 - (cb - 8)
        host = e & ((1 << x) - 1)
        n = (((e >> x) & ((1 << (cb - 8)) - 1)) + 1) * 512 - (host & 511)
    else:
        host, n = e & MASK, cs
print(l2, host, n)
EOF

RR() { tmo python3 "$T/rr.py" "$@"; }

# expect CASE WANT VIEW REF MODE RANGES...: every range must read as WANT:
#   ok    byte-identical to REF
#   eio   an EIO error (after any number of good bytes: the page cache may
#         spread a bad sector's error over its neighbours, never its bytes)
#   gone  ENOENT at open
#   end   the end of the file (eof 0) or EIO: a range the file no longer has
expect() {
    local name=$1 want=$2 view=$3 ref=$4 mode=$5 out bad
    shift 5
    out=$(RR "$view" "$ref" "$mode" "$@" 2>&1)
    case $want in
    ok) bad=$(printf '%s\n' "$out" | grep -v ' ok$') ;;
    eio) bad=$(printf '%s\n' "$out" | grep -v ' error EIO [0-9]*$') ;;
    gone) bad=$(printf '%s\n' "$out" | grep -v ' openerr ENOENT$') ;;
    end) bad=$(printf '%s\n' "$out" | grep -v -E ' (eof 0|error EIO 0)$') ;;
    esac
    if [ -z "$out" ]; then
        fail "$name" "rr.py printed nothing"
    elif [ -n "$bad" ]; then
        fail "$name" "want $want ($mode read of $view), got: $(printf '%s\n' "$bad" | head -n 4 | tr '\n' ';')"
    else
        pass "$name"
    fi
}

# still_up CASE: the daemon runs and its mount answers.
still_up() {
    if alive "$IMGFS_PID" && tmo stat "$MNT" >/dev/null && tmo ls "$MNT" >/dev/null; then
        pass "$1/daemon-alive"
    else
        fail "$1/daemon-alive" "imgfs (PID $IMGFS_PID) died or its mount does not answer"
    fi
}

# logged CASE FILE: a line of the daemon's log names FILE (a path ending so).
logged() {
    if grep -q -E "(^|[/ '\"])${2//./\\.}([: '\"]|$)" "$IMGFS_LOG"; then
        pass "$1/logged"
    else
        fail "$1/logged" "no line of $(basename "$IMGFS_LOG") names $2 ($(wc -l <"$IMGFS_LOG") lines)"
    fi
}

# size_is CASE VIEW BYTES
size_is() {
    local got
    got=$(tmo stat -c %s "$2" 2>&1)
    if [ "$got" = "$3" ]; then
        pass "$1/size"
    else
        fail "$1/size" "st_size of $2 is $got, want $3"
    fi
}

# hold VAR PATH: open PATH on a new descriptor of this shell, which rr.py
# inherits ("fd:$VAR"); VAR is -1 when the open fails (rr.py then says
# EBADF).  unhold FD closes it.
hold() {
    local fd
    if exec {fd}<"$2"; then
        printf -v "$1" %s "$fd"
    else
        fail "$(basename "$2")/hold" "cannot open $2"
        printf -v "$1" %s -1
    fi
}
unhold() {
    local fd
    for fd in "$@"; do
        [ "$fd" -ge 0 ] && exec {fd}<&-
    done
    return 0
}

# mount_faultfs SRC MNT FAULTFS-ARGS...: faultfs in the foreground, in the
# background, its stderr in FAULTFS_LOG.  Registered as one of lib.sh's
# mounts: the EXIT trap unmounts it after the imgfs mounted on top.
FAULTFS_PID=
FAULTFS_LOG=
mount_faultfs() {
    local src=$1 mnt=$2 i
    shift 2
    mkdir -p "$mnt"
    mnt=$(realpath "$mnt")
    FAULTFS_LOG=$T/faultfs.$((${#MOUNTS[@]} + 1)).log
    "$FAULTFS" -f "$@" "$src" "$mnt" 2>"$FAULTFS_LOG" &
    FAULTFS_PID=$!
    MOUNTS+=("$mnt")
    MOUNT_PIDS+=("$FAULTFS_PID")
    for ((i = 0; i < 150; i++)); do
        is_mounted "$mnt" && return 0
        alive "$FAULTFS_PID" || break
        sleep 0.1
    done
    return 1
}

# host_of IMG GUEST: the host offset of guest byte GUEST, from qemu-img map.
host_of() {
    qimg map -U --output=json "$1" |
        jq -r --argjson g "$2" '.[] | select(.start <= $g and $g < .start + .length and .data and has("offset")) | .offset + ($g - .start)'
}

# A fresh reference raw file of IMG (qemu's bytes) at REF.
ref_raw() {
    local out
    out=$(realpath -m "$2")
    (cd "$(dirname "$1")" && tmo qemu-img convert -U -O raw "$(basename "$1")" "$out")
}

python3 "$T/mkpat.py" "$T/pattern.raw" $((16 * M)) "${REGIONS[@]}" ||
    { fail setup "mkpat.py failed"; finish; }

# ===========================================================================
# eio: bad host bytes under one mount.  G is the guest range that goes bad:
# one 64 KiB cluster inside the data at [4, 5) MiB, off any readahead
# boundary, so that a read of [4, 5) MiB gets good bytes and then bad ones.
G=$((4 * M + 320 * K))
mkdir -p eio/src eio/ref
(
    cd eio/src &&
        qemu-img convert -O qcow2 ../../pattern.raw q.qcow2 &&
        cp --sparse=always ../../pattern.raw r.img &&
        qemu-img convert -O vmdk ../../pattern.raw k.vmdk &&
        qemu-img convert -O vdi ../../pattern.raw d.vdi &&
        qemu-img convert -O vpc ../../pattern.raw h.vhd &&
        qemu-img convert -c -O qcow2 ../../pattern.raw c.qcow2 &&
        qemu-img convert -O qcow2 -o cluster_size=4096 ../../pattern.raw l2.qcow2
) || fail eio/build "qemu-img could not make the images"

faults=()
eio_images=()
for img in q.qcow2 r.img k.vmdk d.vdi h.vhd; do
    h=$(host_of "eio/src/$img" "$G")
    if [ -z "$h" ]; then
        fail "eio/$img/build" "qemu-img map gives no host offset for guest $G"
        continue
    fi
    faults+=(--eio "$img:$h:$((64 * K))")
    eio_images+=("$img")
done
# a compressed cluster: its compressed bytes
if read -r _ h n < <(python3 "$T/qloc.py" eio/src/c.qcow2 "$G") && [ "$n" -lt $((64 * K)) ]; then
    faults+=(--eio "c.qcow2:$h:$n")
    eio_images+=(c.qcow2)
else
    fail eio/c.qcow2/build "no compressed cluster at guest $G"
fi
# a qcow2 L2 table: with 4 KiB clusters one table maps 2 MiB, [4, 6) MiB here
if read -r l2 _ < <(python3 "$T/qloc.py" eio/src/l2.qcow2 "$G") && [ "$l2" -gt 0 ]; then
    faults+=(--eio "l2.qcow2:$l2:4096")
    eio_images+=(l2.qcow2)
else
    fail eio/l2.qcow2/build "no L2 table for guest $G"
fi
for img in "${eio_images[@]}"; do
    ref_raw "eio/src/$img" "eio/ref/$img.raw" || fail "eio/$img/ref" "qemu-img convert failed"
done

if ! mount_faultfs eio/src eio/ffs "${faults[@]}"; then
    fail eio/faultfs-mount "faultfs did not mount: $(tail -n 3 "$FAULTFS_LOG" | tr '\n' ' ')"
elif ! mount_imgfs eio/ffs eio/mnt; then
    fail eio/mount "$IMGFS_ERR"
else
    MNT=$T/eio/mnt
    # First the MiB around each fault, while the view's page cache is cold
    # (the kernel asks imgfs for the whole MiB at once): the good bytes
    # before the fault, then EIO; never an early end of file, and the size
    # stays.
    for img in "${eio_images[@]}"; do
        view=$MNT/${img%.*}.raw
        expect "eio/$img/around" eio "$view" "eio/ref/$img.raw" buffered "$((4 * M)):$M"
        size_is "eio/$img/around" "$view" "$(stat -c %s "eio/ref/$img.raw")"
    done
    # (one failure above must not hide the others: the kernel forgets a
    # size it learnt from a short read once the attribute cache expires)
    sleep "$CACHE_WAIT"
    for img in "${eio_images[@]}"; do
        c=eio/$img
        view=$MNT/${img%.*}.raw
        ref=eio/ref/$img.raw
        far=()
        for r in "${ALL_MIB[@]}"; do
            [ "${r%%:*}" -eq $((4 * M)) ] && continue
            # the L2 table maps [4, 6) MiB: all of it is unreadable
            [ "$img" = l2.qcow2 ] && [ "${r%%:*}" -eq $((5 * M)) ] && continue
            far+=("$r")
        done
        expect "$c/bad-direct" eio "$view" "$ref" direct "$G:$((64 * K))"
        expect "$c/bad-buffered" eio "$view" "$ref" buffered "$G:$((64 * K))"
        expect "$c/far-direct" ok "$view" "$ref" direct "${far[@]}"
        expect "$c/far-buffered" ok "$view" "$ref" buffered "${far[@]}"
        if grep -q "^faultfs: EIO ${img//./\\.} " "$FAULTFS_LOG"; then
            pass "$c/fault-hit"
        else
            fail "$c/fault-hit" "faultfs never failed a read of $img: the case tests nothing"
        fi
        logged "$c" "$img"
    done
    still_up eio
    umount_imgfs eio/mnt
fi
umount_imgfs eio/ffs

# ===========================================================================
# truncate: data cut away under an open handle.
mkdir -p trunc/src trunc/ref
(
    cd trunc/src &&
        qemu-img convert -O qcow2 ../../pattern.raw t.qcow2 &&
        qemu-img convert -O qcow2 ../../pattern.raw tb.qcow2 &&
        qemu-img create -q -f qcow2 -b tb.qcow2 -F qcow2 to.qcow2 &&
        qemu-img convert -O qcow2 ../../pattern.raw g.qcow2 &&
        cp --sparse=always ../../pattern.raw tr.img &&
        cp --sparse=always ../../pattern.raw gr.img
) && qio trunc/src/to.qcow2 qcow2 "write -P 0x5a 0 $((64 * K))" "write -P 0x5b $((2 * M)) $((64 * K))" ||
    fail trunc/build "qemu could not make the images"
for img in t.qcow2 to.qcow2 g.qcow2; do
    ref_raw "trunc/src/$img" "trunc/ref/$img.raw" || fail "trunc/$img/ref" "qemu-img convert failed"
done
# Cut the qcow2 files in the middle of the data at [8, 10) MiB: its first
# 512 KiB stay, the rest and [15, 16) MiB go (qemu-img convert lays clusters
# out in guest order; checked).
cut=$(($(host_of trunc/src/t.qcow2 $((8 * M))) + 512 * K))
cutb=$(($(host_of trunc/src/tb.qcow2 $((8 * M))) + 512 * K))
if [ "$(host_of trunc/src/t.qcow2 $((15 * M)))" -lt "$cut" ] ||
    [ "$(host_of trunc/src/t.qcow2 $((4 * M)))" -gt "$cut" ]; then
    fail trunc/build "unexpected cluster layout of t.qcow2: $(qimg map -U --output=json trunc/src/t.qcow2 | tr -d '\n' | head -c 300)"
fi
kept=("0:$M" "$M:$M" "$((2 * M)):$M" "$((4 * M)):$M" "$((5 * M)):$((3 * M))" "$((8 * M)):$((512 * K))")
cutaway=("$((8 * M + 512 * K)):$((512 * K))" "$((9 * M)):$M" "$((15 * M)):$M")

if ! mount_imgfs trunc/src trunc/mnt; then
    fail trunc/mount "$IMGFS_ERR"
else
    MNT=$T/trunc/mnt
    fd_t=-1 fd_to=-1 fd_tr=-1 fd_g=-1 fd_gr=-1
    hold fd_t "$MNT/t.raw"
    hold fd_to "$MNT/to.raw"
    hold fd_tr "$MNT/tr.raw"
    hold fd_g "$MNT/g.raw"
    hold fd_gr "$MNT/gr.raw"
    truncate -s "$cut" trunc/src/t.qcow2
    truncate -s "$cutb" trunc/src/tb.qcow2
    truncate -s $((8 * M + 512 * K)) trunc/src/tr.img
    head -c $((3 * M)) /dev/urandom >>trunc/src/g.qcow2
    head -c $((M + 4 * K)) /dev/urandom >>trunc/src/gr.img

    # qcow2: the cut clusters are EIO, through the held handle and new ones
    r=trunc/ref/t.qcow2.raw
    expect trunc/qcow2/cut-held eio "$MNT/t.raw" "$r" "fd:$fd_t" "${cutaway[@]}"
    expect trunc/qcow2/cut-direct eio "$MNT/t.raw" "$r" direct "${cutaway[@]}"
    expect trunc/qcow2/kept-held ok "$MNT/t.raw" "$r" "fd:$fd_t" "${kept[@]}"
    # [8, 10) MiB from its start: 512 KiB of good bytes, then EIO, not EOF
    expect trunc/qcow2/across-cut eio "$MNT/t.raw" "$r" buffered "$((8 * M)):$((2 * M))"
    # the base of a chain cut short under the open overlay
    r=trunc/ref/to.qcow2.raw
    expect trunc/chain/cut-held eio "$MNT/to.raw" "$r" "fd:$fd_to" "${cutaway[@]}"
    expect trunc/chain/kept-held ok "$MNT/to.raw" "$r" "fd:$fd_to" "${kept[@]}"
    # raw: the view is the file, cut short: what is gone ends the file (or
    # fails), never reads as zeros
    r=pattern.raw
    expect trunc/raw/cut-held end "$MNT/tr.raw" "$r" "fd:$fd_tr" "$((15 * M)):$M" "$((9 * M)):$M"
    expect trunc/raw/kept-held ok "$MNT/tr.raw" "$r" "fd:$fd_tr" "${kept[@]}"
    # grown: a qcow2 with bytes appended reads as before
    expect trunc/grown-qcow2/held ok "$MNT/g.raw" trunc/ref/g.qcow2.raw "fd:$fd_g" "${ALL_MIB[@]}"
    expect trunc/grown-raw/held ok "$MNT/gr.raw" pattern.raw "fd:$fd_gr" "${ALL_MIB[@]}"

    sleep "$CACHE_WAIT"
    expect trunc/qcow2/cut-held-later eio "$MNT/t.raw" trunc/ref/t.qcow2.raw "fd:$fd_t" "${cutaway[@]}"
    expect trunc/qcow2/kept-held-later ok "$MNT/t.raw" trunc/ref/t.qcow2.raw "fd:$fd_t" "${kept[@]}"
    size_is trunc/qcow2 "$MNT/t.raw" $((16 * M))
    size_is trunc/raw "$MNT/tr.raw" $((8 * M + 512 * K))
    size_is trunc/grown-qcow2 "$MNT/g.raw" $((16 * M))
    size_is trunc/grown-raw "$MNT/gr.raw" $((17 * M + 4 * K))
    expect trunc/grown-qcow2/held-later ok "$MNT/g.raw" trunc/ref/g.qcow2.raw "fd:$fd_g" "${ALL_MIB[@]}"
    # a new open sees the raw file as stat now describes it, to its new end
    expect trunc/grown-raw/new-open ok "$MNT/gr.raw" trunc/src/gr.img direct "$((16 * M)):$((M + 4 * K))"
    unhold "$fd_t" "$fd_to" "$fd_tr" "$fd_g" "$fd_gr"
    sleep "$CACHE_WAIT"

    # After every handle is closed: the qcow2 opens again, still EIO where
    # cut; the raw views have the file's new size and bytes.
    expect trunc/qcow2/cut-reopened eio "$MNT/t.raw" trunc/ref/t.qcow2.raw buffered "${cutaway[@]}"
    expect trunc/qcow2/kept-reopened ok "$MNT/t.raw" trunc/ref/t.qcow2.raw direct "${kept[@]}"
    expect trunc/raw/reopened ok "$MNT/tr.raw" trunc/src/tr.img buffered "0:$((8 * M + 512 * K))"
    expect trunc/grown-raw/reopened ok "$MNT/gr.raw" trunc/src/gr.img buffered "0:$((17 * M + 4 * K))"
    logged trunc/qcow2 t.qcow2
    logged trunc/chain tb.qcow2
    still_up trunc
    umount_imgfs trunc/mnt
fi

# ===========================================================================
# delete: the open handle keeps reading the image it opened (as any file
# deleted while open); a new lookup says ENOENT.
mkdir -p del/src del/ref
qemu-img convert -O qcow2 pattern.raw del/src/x.qcow2 &&
    cp del/src/x.qcow2 del/src/y.qcow2 &&
    ref_raw del/src/x.qcow2 del/ref/x.raw || fail del/build "qemu-img failed"
if ! mount_imgfs del/src del/mnt; then
    fail del/mount "$IMGFS_ERR"
else
    MNT=$T/del/mnt
    fd_x=-1
    hold fd_x "$MNT/x.raw"
    rm del/src/x.qcow2
    expect del/held-now ok "$MNT/x.raw" del/ref/x.raw "fd:$fd_x" "0:$((3 * M))"
    sleep "$CACHE_WAIT"
    expect del/held-later ok "$MNT/x.raw" del/ref/x.raw "fd:$fd_x" "${ALL_MIB[@]}"
    expect del/new-open gone "$MNT/x.raw" del/ref/x.raw buffered "0:$M"
    if out=$(tmo stat "$MNT/x.raw" 2>&1); then
        fail del/lookup "stat of the deleted view works: $out"
    elif [[ $out == *"No such file"* ]]; then
        pass del/lookup
    else
        fail del/lookup "stat failed, but not with ENOENT: $out"
    fi
    if tmo ls "$MNT" | grep -q -x x.raw; then
        fail del/listing "x.raw still listed"
    else
        pass del/listing
    fi
    expect del/other ok "$MNT/y.raw" del/ref/x.raw direct "${REGIONS[@]}"
    unhold "$fd_x"
    still_up del
    umount_imgfs del/mnt
fi

# ===========================================================================
# replace: another image renamed over one.  A new open after every handle
# is closed reads the new image (bytes, size, map: check_view against qemu);
# with a handle held across the replacement, that handle still reads the old
# image and new opens read the new one.
mkdir -p rep/src rep/stage rep/ref
for n in 1 2 3; do
    python3 "$T/mkpat.py" "rep/stage/p$n.raw" $(((16 + 4 * n) * M)) "${REGIONS[@]}" "$((17 * M)):$M"
done
qemu-img convert -O qcow2 pattern.raw rep/src/a.qcow2 &&
    qemu-img convert -O qcow2 rep/stage/p1.raw rep/stage/b.qcow2 &&
    qemu-img convert -O vmdk rep/stage/p2.raw rep/stage/c.vmdk &&
    qemu-img convert -O qcow2 -o cluster_size=16384 rep/stage/p3.raw rep/stage/d.qcow2 ||
    fail rep/build "qemu-img failed"
if ! mount_imgfs rep/src rep/mnt; then
    fail rep/mount "$IMGFS_ERR"
else
    MNT=$T/rep/mnt
    expect rep/before ok "$MNT/a.raw" pattern.raw buffered "0:$((16 * M))"
    # 1: no handle open; another qcow2 of another size
    mv rep/stage/b.qcow2 rep/src/a.qcow2
    sleep "$CACHE_WAIT"
    ref_image rep/qcow2 rep/src/a.qcow2 && check_view rep/qcow2 "$MNT/a.raw" 65536 "sha map stat"
    # 2: the same with a vmdk (the format changes too)
    mv rep/stage/c.vmdk rep/src/a.qcow2
    sleep "$CACHE_WAIT"
    ref_image rep/vmdk rep/src/a.qcow2 && check_view rep/vmdk "$MNT/a.raw" 65536 "sha map stat"
    # 3: a handle held across the replacement
    ref_raw rep/src/a.qcow2 rep/ref/c.raw
    fd_a=-1
    hold fd_a "$MNT/a.raw"
    mv rep/stage/d.qcow2 rep/src/a.qcow2
    ref_raw rep/src/a.qcow2 rep/ref/d.raw
    sleep "$CACHE_WAIT"
    expect rep/held/old-handle ok "$MNT/a.raw" rep/ref/c.raw "fd:$fd_a" "0:$((20 * M))"
    expect rep/held/new-open ok "$MNT/a.raw" rep/ref/d.raw buffered "0:$((28 * M))"
    unhold "$fd_a"
    sleep "$CACHE_WAIT"
    ref_image rep/held rep/src/a.qcow2 && check_view rep/held "$MNT/a.raw" 16384 "sha map stat"
    still_up rep
    umount_imgfs rep/mnt
fi

# ===========================================================================
# backing: the backing file goes away.  An overlay held open keeps reading
# (its chain holds the file open); opened afterwards, the chain cannot be
# built: the open (or read) fails with EIO, logged once, naming the file.
mkdir -p bk/src bk/away bk/ref
for n in 1 2; do
    qemu-img convert -O qcow2 pattern.raw "bk/src/base$n.qcow2" &&
        qemu-img create -q -f qcow2 -b "base$n.qcow2" -F qcow2 "bk/src/ov$n.qcow2" &&
        qio "bk/src/ov$n.qcow2" qcow2 "write -P 0x6$n $((2 * M + 4 * K)) $((8 * K))" &&
        ref_raw "bk/src/ov$n.qcow2" "bk/ref/ov$n.raw" || fail "bk/build$n" "qemu failed"
done
if ! mount_imgfs bk/src bk/mnt; then
    fail bk/mount "$IMGFS_ERR"
else
    MNT=$T/bk/mnt
    fd_o=-1
    hold fd_o "$MNT/ov1.raw"
    rm bk/src/base1.qcow2
    mv bk/src/base2.qcow2 bk/away/
    expect bk/held-now ok "$MNT/ov1.raw" bk/ref/ov1.raw "fd:$fd_o" "0:$((3 * M))"
    sleep "$CACHE_WAIT"
    expect bk/held-later ok "$MNT/ov1.raw" bk/ref/ov1.raw "fd:$fd_o" "${ALL_MIB[@]}"
    unhold "$fd_o"
    sleep "$CACHE_WAIT"
    for n in 1 2; do
        c=bk/ov$n
        for i in 1 2 3; do
            out=$(tmo python3 "$LIB_DIR/tryread.py" "$MNT/ov$n.raw" 2>&1)
            case $out in
            "error open EIO"* | "error read EIO"*) pass "$c/refused-$i" ;;
            *) fail "$c/refused-$i" "want EIO at open or read of ov$n.raw, got: $out" ;;
            esac
        done
        nl=$(grep -c -F "base$n.qcow2" "$IMGFS_LOG")
        if [ "$nl" -eq 1 ]; then
            pass "$c/logged-once"
            say "    log: $(grep -F "base$n.qcow2" "$IMGFS_LOG")"
        else
            fail "$c/logged-once" "$nl lines of the log name base$n.qcow2, want 1"
        fi
    done
    still_up bk
    umount_imgfs bk/mnt
fi

# faultfs is built with the sanitizers too
for m in "$T"/faultfs.*.log; do
    [ -s "$m" ] || continue
    if grep -q -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$m"; then
        fail "sanitizer:$(basename "$m" .log)" "$(grep -m 1 -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$m")"
    fi
done
finish
