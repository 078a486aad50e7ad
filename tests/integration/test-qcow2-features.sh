#!/usr/bin/env bash
# qcow2 features, each image checked against qemu (sha, map, stat, cp, tar):
# zlib and zstd compressed clusters (with a later plain write over one), zero
# clusters (v3, and over a backing file so that they shadow its data), a
# 3-level backing chain, a backing file shorter than its overlay, a raw backing
# file, extended_l2=on with partial subcluster writes (alone and over a
# backing file), an external data file with and without data_file_raw=on, and
# a sparse raw .img.
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io jq python3 || finish
need_build setup || finish

M=$((1 << 20))
K=1024
mkdir -p src work
views=()   # "name:cluster"

built() { views+=("$1:${2:-65536}"); }
broke() { fail "$1/build" "could not build the image with qemu (see output above)"; }

# A 16 MiB raw file with compressible text, incompressible bytes, a run of
# one byte value and untouched (zero) stretches.
python3 - work/pattern.raw <<'PY' || fail pattern/build "python could not write the pattern"
import random, sys
r = random.Random(42)
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(16 * M)
    text = b"".join(b"line %06d of a very compressible text\n" % i for i in range(20000))
    for off, data in ((0, text[:300000]), (1 * M + 12345, r.randbytes(200000)),
                      (5 * M, b"\x5a" * 1000000), (9 * M - 3000, r.randbytes(6000)),
                      (12 * M + 70000, text[:65536 * 3]), (16 * M - 512, r.randbytes(512))):
        f.seek(off)
        f.write(data)
PY

# compressed clusters
for ct in zlib zstd; do
    if qemu-img convert -q -c -O qcow2 -o "compression_type=$ct" work/pattern.raw "src/$ct.qcow2" &&
        qio "src/$ct.qcow2" qcow2 "write -P 0xc1 $((1 * M + 5000)) 10000" "write -P 0xc2 $((14 * M)) 4096"; then
        built "$ct"
    else
        broke "$ct"
    fi
done

# zero clusters in a v3 image: over data, over nothing, unaligned
if qemu-img create -q -f qcow2 -o compat=1.1 src/zero.qcow2 16M &&
    qio src/zero.qcow2 qcow2 "write -P 0x55 0 $((4 * M))" "write -z $M $M" \
        "write -z $((8 * M)) $((512 * K))" "write -z $((2 * M + 1000)) 100000" \
        "write -P 0x56 $((9 * M)) $((64 * K))" "write -z -u $((9 * M)) $((64 * K))"; then
    built zero
else
    broke zero
fi

# zero clusters shadowing backing data
if qemu-img create -q -f qcow2 src/zb-base.qcow2 16M &&
    qio src/zb-base.qcow2 qcow2 "write -P 0x66 0 $((8 * M))" &&
    qemu-img create -q -f qcow2 -b zb-base.qcow2 -F qcow2 src/zb-top.qcow2 &&
    qio src/zb-top.qcow2 qcow2 "write -z $M $M" "write -z 3000000 70000" \
        "write -P 0x67 $((5 * M)) 4096"; then
    built zb-base
    built zb-top
else
    broke zb-top
fi

# 3-level chain, different data in each layer
if qemu-img create -q -f qcow2 src/ch-base.qcow2 16M &&
    qio src/ch-base.qcow2 qcow2 "write -P 0x01 0 $((6 * M))" "write -P 0x11 $((12 * M)) 100000" &&
    qemu-img create -q -f qcow2 -b ch-base.qcow2 -F qcow2 src/ch-mid.qcow2 &&
    qio src/ch-mid.qcow2 qcow2 "write -P 0x02 $M $((2 * M))" "write -P 0x12 $((4 * M - 5000)) 10000" \
        "write -z $((5 * M)) $((64 * K))" &&
    qemu-img create -q -f qcow2 -b ch-mid.qcow2 -F qcow2 src/ch-top.qcow2 &&
    qio src/ch-top.qcow2 qcow2 "write -P 0x03 $((1536 * K)) $M" "write -P 0x13 $((14 * M)) 3000" \
        "write -P 0x23 100 7"; then
    built ch-base
    built ch-mid
    built ch-top
else
    broke ch-top
fi

# backing file shorter than the overlay (and not a whole number of clusters)
if qemu-img create -q -f qcow2 src/sh-base.qcow2 $((3 * M + 512)) &&
    qio src/sh-base.qcow2 qcow2 "write -P 0x31 0 $((3 * M + 512))" &&
    qemu-img create -q -f qcow2 -b sh-base.qcow2 -F qcow2 src/sh-top.qcow2 16M &&
    qio src/sh-top.qcow2 qcow2 "write -P 0x32 $((8 * M)) 4096" "write -P 0x33 $((3 * M - 100)) 200"; then
    built sh-base
    built sh-top
else
    broke sh-top
fi

# raw backing file
if truncate -s 8M src/rb-base.img &&
    write_patterns src/rb-base.img raw 4096 $((8 * M)) &&
    qemu-img create -q -f qcow2 -b rb-base.img -F raw src/rb-top.qcow2 16M &&
    qio src/rb-top.qcow2 qcow2 "write -P 0x41 $((2 * M)) 70000" "write -z 0 $((64 * K))"; then
    built rb-base 4096
    built rb-top
else
    broke rb-top
fi

# extended L2 entries (32 subclusters of 2 KiB), partial subcluster writes
if qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k src/el2.qcow2 16M &&
    qio src/el2.qcow2 qcow2 "write -P 0x71 2048 2048" "write -P 0x72 10000 100" \
        "write -P 0x73 $((94 * K)) 4096" "write -P 0x74 $((128 * K)) $((64 * K))" \
        "write -z $((130 * K)) 2048" "write -P 0x75 $M $((64 * K))" "write -z $((2 * M)) 6144"; then
    built el2
else
    broke el2
fi
if qemu-img create -q -f qcow2 src/el2-base.qcow2 16M &&
    qio src/el2-base.qcow2 qcow2 "write -P 0x44 0 $M" &&
    qemu-img create -q -f qcow2 -o extended_l2=on -b el2-base.qcow2 -F qcow2 src/el2-top.qcow2 &&
    qio src/el2-top.qcow2 qcow2 "write -P 0x76 2048 2048" "write -P 0x77 70000 1000" \
        "write -z 4096 2048" "write -P 0x78 $((3 * M + 2048)) 2048"; then
    built el2-base
    built el2-top
else
    broke el2-top
fi

# external data file, plain and data_file_raw=on (made from inside src so
# that the recorded names are relative)
if (cd src && qemu-img create -q -f qcow2 -o data_file=df-data.bin df.qcow2 16M) &&
    write_patterns src/df.qcow2 qcow2 65536 $((16 * M)); then
    built df
else
    broke df
fi
if (cd src && qemu-img create -q -f qcow2 -o data_file=dfr-data.bin,data_file_raw=on dfr.qcow2 16M) &&
    write_patterns src/dfr.qcow2 qcow2 65536 $((16 * M)); then
    built dfr
else
    broke dfr
fi

# sparse raw
if truncate -s 16M src/sparse.img && write_patterns src/sparse.img raw 4096 $((16 * M)); then
    built sparse 4096
else
    broke sparse
fi

for v in "${views[@]}"; do
    n=${v%%:*}
    f=$(ls src/"$n".*)
    ref_image "$n" "$f" || views=("${views[@]/$v/}")
done

if ! mount_imgfs src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
pass mount

for v in "${views[@]}"; do
    [ -n "$v" ] || continue
    check_view "${v%%:*}" "mnt/${v%%:*}.raw" "${v#*:}"
done

if alive "$IMGFS_PID"; then pass daemon-alive; else fail daemon-alive "imgfs (PID $IMGFS_PID) died"; fi
finish
