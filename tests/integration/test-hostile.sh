#!/usr/bin/env bash
# Hostile inputs in one mount next to a good image.  Each bad image must be
# absent from the listing or fail stat/open/read with an error (never hang and
# never read "successfully"); the daemon stays alive, the mount answers, the
# good image still reads right, and the daemon's log has a line naming the
# bad file.
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io jq python3 || finish
need_build setup || finish

P=$LIB_DIR/qcow2-patch.py
M=$((1 << 20))
mkdir -p src work

# A valid template: v3, 64 KiB clusters, data in the first L2 table.
qemu-img create -q -f qcow2 work/t.qcow2 16M &&
    qio work/t.qcow2 qcow2 "write -P 0x11 0 $((128 * 1024))" "write -P 0x12 $((5 * M)) 65536" ||
    fail template/build "qemu could not make the template"

cp work/t.qcow2 src/good.qcow2
write_patterns src/good.qcow2 qcow2 65536 $((16 * M)) || fail good/build "qemu-io failed"
ref_image good src/good.qcow2

# name:expected-qemu-behaviour:patch edits
bad=()
patch() {
    local name=$1
    shift
    if python3 "$P" work/t.qcow2 "src/$name.qcow2" "$@"; then
        bad+=("$name")
    else
        fail "$name/build" "qcow2-patch.py failed"
    fi
}
patch trunc-header truncate=72
patch l1-past-eof l1_table_offset=0x10000000000
patch cbits8 cluster_bits=8
patch cbits22 cluster_bits=22
patch l1-huge l1_size=0x7fffffff
patch incompat incompatible_features=0x10000000000
patch crypt-aes crypt_method=1
patch l2-past-eof l1_entry0=0x8000010000000000
patch data-past-eof l2_entry0=0x8000010000000000

# a real encrypted image (LUKS) whose key we do not have
if qemu-img create -q -f qcow2 --object secret,id=sec0,data=imgfs-test \
    -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 src/luks.qcow2 16M; then
    bad+=(luks)
else
    fail luks/build "qemu-img could not make a LUKS qcow2"
fi

# backing chain loops: a -> b -> a, and an image backed by itself
if qemu-img create -q -f qcow2 src/loop-a.qcow2 16M &&
    qemu-img create -q -f qcow2 -b loop-a.qcow2 -F qcow2 src/loop-b.qcow2 &&
    (cd src && qemu-img rebase -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2) &&
    qemu-img create -q -f qcow2 src/loop-self.qcow2 16M &&
    (cd src && qemu-img rebase -u -b loop-self.qcow2 -F qcow2 loop-self.qcow2); then
    bad+=(loop-a loop-b loop-self)
else
    fail loop/build "qemu-img could not make the backing loop"
fi

# missing backing file
if qemu-img create -q -f qcow2 src/gone.qcow2 16M &&
    qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 src/no-backing.qcow2 &&
    rm src/gone.qcow2; then
    bad+=(no-backing)
else
    fail no-backing/build "qemu-img could not make the overlay"
fi

# Sanity: qemu too refuses to read each of them (open or convert fails),
# except where it reads past the end of the file as zeros: there imgfs is
# meant to be stricter (DESIGN: "L2 table at ... lies past the end of the file").
for n in "${bad[@]}"; do
    case $n in
        l1-past-eof | l2-past-eof | data-past-eof) continue ;;
    esac
    # (qemu-img spins for ever on a self-backed image: hence the time limit)
    if (cd src && timeout -k 1 3 qemu-img convert -U -O raw "$n.qcow2" ../work/o.raw) </dev/null >/dev/null 2>&1; then
        fail "$n/oracle" "qemu-img reads src/$n.qcow2 without an error: the test image is not broken"
    fi
    rm -f work/o.raw
done

if ! mount_imgfs src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
pass mount

if ! listing=$(tmo ls -A mnt 2>&1); then
    fail listing "ls of the mount failed: $listing"
fi

for n in "${bad[@]}"; do
    out=$(tmo python3 "$LIB_DIR/tryread.py" "mnt/$n.raw" 2>&1)
    rc=$?
    case $rc:$out in
        0:absent | 0:listed-absent | 0:error\ *)
            pass "$n/refused"
            ;;
        124:* | 137:*)
            fail "$n/refused" "stat/open/read of mnt/$n.raw did not return within ${OP_TIMEOUT}s (hang)"
            ;;
        0:ok\ *)
            fail "$n/refused" "mnt/$n.raw read ${out#ok } bytes without an error from a broken image"
            ;;
        *)
            fail "$n/refused" "tryread failed (rc $rc): $out"
            ;;
    esac
    say "    $n: $out"
    if alive "$IMGFS_PID"; then
        pass "$n/daemon-alive"
    else
        fail "$n/daemon-alive" "imgfs (PID $IMGFS_PID) died after touching $n.qcow2"
        break
    fi
done

if tmo stat mnt >/dev/null && tmo ls -A mnt >/dev/null; then
    pass mount-answers
else
    fail mount-answers "the mount no longer answers stat/ls"
fi
check_view good mnt/good.raw 65536 "sha map stat"

# One line in the log names each bad file.
for n in "${bad[@]}"; do
    if grep -q -F "$n.qcow2" "$IMGFS_LOG"; then
        pass "$n/logged"
        say "    log: $(grep -F "$n.qcow2" "$IMGFS_LOG" | head -n 1)"
    else
        fail "$n/logged" "no line of the imgfs log names $n.qcow2"
    fi
done
finish
