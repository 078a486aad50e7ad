#!/usr/bin/env bash
# qcow2 v2 (compat=0.10) and v3 (compat=1.1) with cluster sizes 512 B, 4 KiB,
# 64 KiB and 2 MiB, patterns at scattered offsets: every view must equal
# qemu-img convert / map (sha, map, stat, cp --sparse, tar -S).
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io jq python3 || finish
need_build setup || finish

mkdir -p src
names=()
for compat in 0.10 1.1; do
    for c in 512 4096 65536 2097152; do
        case $c in
            512) size=$((4 << 20)) ;;
            2097152) size=$((64 << 20)) ;;
            *) size=$((16 << 20)) ;;
        esac
        v=v3
        [ "$compat" = 0.10 ] && v=v2
        name=$v-c$c
        img=src/$name.qcow2
        if qemu-img create -q -f qcow2 -o "compat=$compat,cluster_size=$c" "$img" "$size" &&
            write_patterns "$img" qcow2 "$c" "$size" &&
            ref_image "$name" "$img"; then
            names+=("$name:$c")
        else
            fail "$name/build" "could not build $img with qemu"
        fi
    done
done

if ! mount_imgfs src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
pass mount

for nc in "${names[@]}"; do
    check_view "${nc%%:*}" "mnt/${nc%%:*}.raw" "${nc#*:}"
done

if alive "$IMGFS_PID"; then pass daemon-alive; else fail daemon-alive "imgfs (PID $IMGFS_PID) died"; fi
finish
