#!/usr/bin/env bash
# The generated hostile-image suite (tests/integration/hostile/): broken
# copies of qemu-made qcow2, vmdk, vdi and vhd images (truncated at every
# structure boundary, offsets past the end, overlapping metadata, sizes that
# overflow, bad compressed streams, loops, a chain 10 000 deep, references
# outside the folder).  imgctl is judged on each (hostile/judge.py imgctl),
# then one imgfs mount serves them all next to a good image
# (hostile/judge.py mount): the views agree with imgctl, the daemon stays up,
# logs each refusal once and keeps its memory bounded.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io python3 || finish
need_build setup || finish
H=$LIB_DIR/hostile
# The daemon's peak memory over the whole suite stays under this (plain:
# ~15 MiB).  ASan keeps up to 256 MiB of freed blocks in quarantine and
# shadow memory on top: the sanitizer build gets room for that.
case $BUILD in
    *asan*) export HOSTILE_MEM_LIMIT_MB=1024 ;;
    *) export HOSTILE_MEM_LIMIT_MB=256 ;;
esac

# judge.py prints "PASS NAME", "FAIL NAME: WHY" or a note.
record() {
    local line rest
    while IFS= read -r line; do
        case $line in
            "PASS "*) pass "${line#PASS }" ;;
            "FAIL "*)
                rest=${line#FAIL }
                fail "${rest%%: *}" "${rest#*: }"
                ;;
            *) say "    $line" ;;
        esac
    done
}

if ! python3 "$H/gen.py" h >gen.log 2>&1; then
    fail generate "gen.py failed: $(tail -n 5 gen.log)"
    finish
fi
say "    $(tail -n 1 gen.log)"

record < <(python3 "$H/judge.py" imgctl h "$BUILD/imgctl" 2>&1 || echo "FAIL judge-imgctl: judge.py failed")

# One good image among them all.
qemu-img create -q -f qcow2 h/src/good.qcow2 16M &&
    write_patterns h/src/good.qcow2 qcow2 65536 $((16 << 20)) ||
    fail good/build "qemu could not make the good image"
ref_image good h/src/good.qcow2

if ! mount_imgfs h/src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
pass mount
record < <(python3 "$H/judge.py" mount h mnt "$IMGFS_PID" "$IMGFS_LOG" 2>&1 ||
    echo "FAIL judge-mount: judge.py failed")
check_view good mnt/good.raw 65536 "sha map stat"
if alive "$IMGFS_PID"; then
    pass daemon-alive-at-end
else
    fail daemon-alive-at-end "imgfs (PID $IMGFS_PID) died"
fi
umount_imgfs mnt

# Lifting the folder rule, the "outside" cases read as qemu-img reads them.
if mount_imgfs h/src mnt2 -o allow_outside; then
    record < <(python3 "$H/judge.py" mount-allow-outside h mnt2 "$IMGFS_PID" "$IMGFS_LOG" 2>&1 ||
        echo "FAIL judge-mount-allow-outside: judge.py failed")
else
    fail mount-allow-outside "$IMGFS_ERR"
fi
finish
