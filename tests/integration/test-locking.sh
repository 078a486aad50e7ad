#!/usr/bin/env bash
# QEMU's image locks.  While qemu-io holds an image open read-write: the view's
# open fails, the daemon logs an "in use" line naming the file, other images
# still read, and a mount with -o force_share reads it.  The same for a
# backing file held by qemu-io.  After qemu-io leaves, the view opens.  While
# the view is open, a qemu-io read-write open is refused and a read-only one
# is allowed.
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io jq python3 mkfifo || finish
need_build setup || finish

M=$((1 << 20))
mkdir -p src
for n in busy free lbase; do
    qemu-img create -q -f qcow2 "src/$n.qcow2" 16M &&
        write_patterns "src/$n.qcow2" qcow2 65536 $((16 * M)) || fail "$n/build" "qemu failed"
done
qemu-img create -q -f qcow2 -b lbase.qcow2 -F qcow2 src/ltop.qcow2 &&
    qio src/ltop.qcow2 qcow2 "write -P 0x99 $M 4096" || fail ltop/build "qemu failed"
for n in busy free ltop; do
    ref_image "$n" "src/$n.qcow2"
done

QIO_PID=
# hold IMG: qemu-io opens IMG read-write and keeps it open (commands from a
# fifo that this shell holds open on fd 3); wait until its lock is visible.
hold() {
    local img=$1 i
    rm -f "$T/qio.in"
    mkfifo "$T/qio.in"
    exec 3<>"$T/qio.in"
    (cd "$(dirname "$img")" && exec qemu-io -f qcow2 "$(basename "$img")") <"$T/qio.in" >"$T/qio.out" 2>&1 &
    QIO_PID=$!
    BG_PIDS+=("$QIO_PID")
    # Watch /proc/locks for a lock on the file's inode: asking qemu-img info
    # instead would take a read lock that refuses writers, and a qemu-io
    # starting at that moment would fail to get its own write lock.
    local ino
    ino=$(stat -c %i "$img")
    for ((i = 0; i < 100; i++)); do
        if awk -v ino="$ino" '{ n = split($6, f, ":"); if (f[n] == ino) found = 1 } END { exit !found }' /proc/locks; then
            sleep 0.2   # qemu takes its lock bytes one by one: let it finish
            return 0
        fi
        alive "$QIO_PID" || break
        sleep 0.1
    done
    say "qemu-io did not take the lock on $img: $(cat "$T/qio.out")"
    return 1
}
release() {
    echo quit >&3
    exec 3>&-
    stop_pid "$QIO_PID"
}

# expect_open_fails CASE VIEW FILE: listed, open fails, "in use" logged.
expect_in_use() {
    local name=$1 view=$2 file=$3 out
    out=$(tmo python3 "$LIB_DIR/tryread.py" "$view" 2>&1)
    case $out in
        "error open "* | "error stat "*) pass "$name/open-fails" ;;
        absent | listed-absent) fail "$name/open-fails" "$view is not there at all ($out): it should be listed and refuse to open" ;;
        *) fail "$name/open-fails" "$view while $file is in use by qemu-io: $out" ;;
    esac
    if grep -i 'in use' "$IMGFS_LOG" | grep -q -F "$file"; then
        pass "$name/logged"
        say "    log: $(grep -i 'in use' "$IMGFS_LOG" | grep -F "$file" | head -n 1)"
    else
        fail "$name/logged" "no 'in use' line naming $file in the imgfs log: $(tail -n 3 "$IMGFS_LOG" | tr '\n' ' ')"
    fi
}

if ! hold src/busy.qcow2; then
    fail hold "qemu-io could not hold src/busy.qcow2"
    finish
fi
if ! mount_imgfs src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
LOG1=$IMGFS_LOG
PID1=$IMGFS_PID
pass mount

expect_in_use busy mnt/busy.raw busy.qcow2
check_view free mnt/free.raw 65536 "sha map"

if mount_imgfs src mnt2 -o force_share; then
    pass mount-force-share
    check_view busy mnt2/busy.raw 65536 "sha map stat"
    umount_imgfs mnt2
else
    fail mount-force-share "$IMGFS_ERR"
fi
IMGFS_LOG=$LOG1
IMGFS_PID=$PID1

release
ref_alias busy-released busy
check_view busy-released mnt/busy.raw 65536 "sha"   # the writer left: it opens now

# A held backing file: the overlay's view refuses to open.
if hold src/lbase.qcow2; then
    expect_in_use backing mnt/ltop.raw lbase.qcow2
    release
    check_view ltop mnt/ltop.raw 65536 "sha map"
else
    fail backing "qemu-io could not hold src/lbase.qcow2"
fi

# The other way round: while the view is open, QEMU may read but not write.
if exec 4<mnt/free.raw; then
    head -c 4096 <&4 >/dev/null
    if (cd src && qemu-io -f qcow2 -c 'write -P 0x01 0 512' free.qcow2) </dev/null >"$T/w.txt" 2>&1; then
        fail qemu-write-refused "qemu-io wrote to free.qcow2 while its view was open: $(head -c 200 "$T/w.txt")"
    elif grep -q 'lock' "$T/w.txt"; then
        pass qemu-write-refused
    else
        fail qemu-write-refused "qemu-io failed, but not for a lock: $(head -c 200 "$T/w.txt")"
    fi
    if (cd src && qemu-io -r -f qcow2 -c 'read 0 512' free.qcow2) </dev/null >"$T/r.txt" 2>&1; then
        pass qemu-read-allowed
    else
        fail qemu-read-allowed "qemu-io -r could not read free.qcow2 while its view was open: $(head -c 200 "$T/r.txt")"
    fi
    exec 4<&-
else
    fail view-open "could not open mnt/free.raw"
fi
if alive "$IMGFS_PID"; then pass daemon-alive; else fail daemon-alive "imgfs died"; fi
finish
