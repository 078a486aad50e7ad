#!/usr/bin/env bash
# imgctl convert, with qemu-img as the judge: every output passes
# `qemu-img check` (no errors, no leaks) and `qemu-img compare` equals the
# source.  qcow2/vmdk/vdi/vpc/raw sources, backing chains, several sources,
# -S, -n, raw and qcow2 outputs (v2/v3, cluster sizes, -c zlib/zstd, -B),
# and bad input: corrupt or truncated sources, a read-only folder, a full
# file system, unknown options, a missing backing file.
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io python3 jq || finish
IMGCTL=$BUILD/imgctl
if [ ! -x "$IMGCTL" ]; then
    fail setup "$IMGCTL is missing (run make)"
    finish
fi

M=$((1 << 20))
mkdir -p src out

# judge CASE DST EXPECTED [DST_FMT]: check (when the format has checks) and
# compare with the expected image.
judge() {
    local name=$1 dst=$2 want=$3 fmt=${4:-} js
    if [ ! -e "$dst" ]; then
        fail "$name" "no destination $dst"
        return 1
    fi
    if [ "$fmt" = qcow2 ]; then
        js=$(qemu-img check -U --output=json "$dst" 2>&1)
        if [ "$(jq -r '(.corruptions // 0) + (.leaks // 0) + (."check-errors" // 0)' <<<"$js" 2>/dev/null)" != 0 ]; then
            fail "$name" "qemu-img check: $(head -c 400 <<<"$js" | tr '\n' ' ')"
            return 1
        fi
    fi
    if ! qemu-img compare -U "$want" "$dst" >"$T/cmp.txt" 2>&1; then
        fail "$name" "qemu-img compare: $(head -c 300 "$T/cmp.txt" | tr '\n' ' ')"
        return 1
    fi
    pass "$name"
}

# run_ok CASE CMD...: the command must succeed; its stderr goes to $T/err.txt.
run_ok() {
    local name=$1
    shift
    if ! tmo "$@" >"$T/out.txt" 2>"$T/err.txt"; then
        fail "$name" "$* failed: $(head -c 400 "$T/err.txt" | tr '\n' ' ')"
        return 1
    fi
}

# ---------------------------------------------------------------------------
# Sources

# 64 MiB: text, random bytes, a run of zero *bytes* inside data (data to the
# map, a hole for -S), a single-byte run, unaligned pieces and the last bytes.
python3 - src/pattern.raw <<'PY' || fail pattern/build "python could not write the pattern"
import random, sys
r = random.Random(7)
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(64 * M)
    text = b"".join(b"line %06d of a compressible text\n" % i for i in range(30000))
    for off, data in ((0, text[:700000]), (2 * M + 12345, r.randbytes(300000)),
                      (5 * M, r.randbytes(64 * 1024) + bytes(256 * 1024) + r.randbytes(4096)),
                      (9 * M - 3000, r.randbytes(6000)), (20 * M, b"\x5a" * (3 * M)),
                      (40 * M + 777, r.randbytes(2 * M)), (64 * M - 512, r.randbytes(512))):
        f.seek(off)
        f.write(data)
PY
cp --sparse=always src/pattern.raw src/pattern-sparse.raw

qemu-img convert -q -O qcow2 src/pattern.raw src/plain.qcow2 || fail build "qcow2 source"
qemu-img convert -q -O qcow2 -o compat=0.10 src/pattern.raw src/v2.qcow2 || fail build "qcow2 v2 source"
qemu-img convert -q -c -O qcow2 src/pattern.raw src/zlib.qcow2 || fail build "zlib source"
qemu-img convert -q -c -O qcow2 -o compression_type=zstd src/pattern.raw src/zstd.qcow2 || fail build "zstd source"
for f in vmdk vdi vpc; do
    qemu-img convert -q -O $f src/pattern.raw src/pattern.$f || fail build "$f source"
done
qemu-img convert -q -O vmdk -o subformat=streamOptimized src/pattern.raw src/stream.vmdk ||
    fail build "streamOptimized vmdk"

# zero clusters over data, and a 3-level chain with different data in each
qemu-img convert -q -O qcow2 src/pattern.raw src/zero.qcow2 &&
    qio src/zero.qcow2 qcow2 "write -z 0 $((512 * 1024))" "write -z $((20 * M)) $M" ||
    fail build "zero-cluster source"
qemu-img create -q -f qcow2 src/base.qcow2 32M &&
    qio src/base.qcow2 qcow2 "write -P 0x11 0 $((8 * M))" "write -P 0x12 $((30 * M)) $M" &&
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 src/mid.qcow2 &&
    qio src/mid.qcow2 qcow2 "write -P 0x21 $M $M" "write -z $((4 * M)) $M" &&
    qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 src/top.qcow2 40M &&
    qio src/top.qcow2 qcow2 "write -P 0x31 $((1 * M + 4096)) 8192" "write -P 0x32 $((35 * M)) $M" ||
    fail build "3-level chain"

# ---------------------------------------------------------------------------
# To raw

for s in plain v2 zlib zstd zero; do
    want=src/pattern.raw; [ $s = zero ] && want=src/zero.qcow2
    run_ok "raw/from-$s" "$IMGCTL" convert -O raw "src/$s.qcow2" "out/$s.raw" &&
        judge "raw/from-$s" "out/$s.raw" "$want"
done
for f in vmdk vdi vpc; do
    run_ok "raw/from-$f" "$IMGCTL" convert -O raw "src/pattern.$f" "out/$f.raw" &&
        judge "raw/from-$f" "out/$f.raw" "src/pattern.$f"
done
run_ok raw/from-stream-vmdk "$IMGCTL" convert src/stream.vmdk out/stream.raw &&
    judge raw/from-stream-vmdk out/stream.raw src/pattern.raw
run_ok raw/from-raw "$IMGCTL" convert -f raw -O raw src/pattern-sparse.raw out/raw.raw &&
    judge raw/from-raw out/raw.raw src/pattern.raw
run_ok raw/chain-flattened "$IMGCTL" convert -O raw src/top.qcow2 out/top.raw &&
    judge raw/chain-flattened out/top.raw src/top.qcow2

# Holes: the raw output allocates about what qemu-img's own output does.
qemu-img convert -O raw src/plain.qcow2 out/qemu.raw
want=$(allocated out/qemu.raw)
got=$(allocated out/plain.raw)
if [ "$got" -le $((want + 64 * 1024)) ]; then
    pass raw/sparse-like-qemu
else
    fail raw/sparse-like-qemu "imgctl's raw allocates $got bytes, qemu-img's $want"
fi
# -S 0 writes the zero bytes inside data; the default leaves them out.
run_ok raw/S0 "$IMGCTL" convert -S 0 -O raw src/plain.qcow2 out/s0.raw && judge raw/S0 out/s0.raw src/pattern.raw
if [ "$(allocated out/s0.raw)" -ge $(($(allocated out/plain.raw) + 200 * 1024)) ]; then
    pass raw/S0-writes-zero-data
else
    fail raw/S0-writes-zero-data "-S 0 allocates $(allocated out/s0.raw), default $(allocated out/plain.raw)"
fi

# several sources, concatenated
qemu-img create -q -f qcow2 src/small.qcow2 3M && qio src/small.qcow2 qcow2 "write -P 0x77 $((2 * M)) 1000" ||
    fail build "small source"
qemu-img convert -O raw src/small.qcow2 src/plain.qcow2 src/pattern.vdi out/qemu-concat.raw
run_ok raw/concat "$IMGCTL" convert -O raw src/small.qcow2 src/plain.qcow2 src/pattern.vdi out/concat.raw &&
    judge raw/concat out/concat.raw out/qemu-concat.raw

# -n into an existing destination full of other bytes: holes become zeros.
python3 -c "import sys; open(sys.argv[1],'wb').write(b'\xee' * (64 << 20))" out/existing.raw
run_ok raw/existing "$IMGCTL" convert -n -O raw src/zero.qcow2 out/existing.raw &&
    judge raw/existing out/existing.raw src/zero.qcow2

# ---------------------------------------------------------------------------
# To qcow2 (when the qcow2 writer is there)

if "$IMGCTL" convert -O qcow2 src/small.qcow2 out/probe.qcow2 2>/dev/null; then
    run_ok qcow2/from-raw "$IMGCTL" convert -O qcow2 src/pattern.raw out/a.qcow2 &&
        judge qcow2/from-raw out/a.qcow2 src/pattern.raw qcow2
    run_ok qcow2/v2 "$IMGCTL" convert -O qcow2 -o compat=0.10 src/zero.qcow2 out/v2.qcow2 &&
        judge qcow2/v2 out/v2.qcow2 src/zero.qcow2 qcow2
    for cs in 512 4k 2M; do
        run_ok "qcow2/cluster-$cs" "$IMGCTL" convert -O qcow2 -o cluster_size=$cs src/top.qcow2 "out/c$cs.qcow2" &&
            judge "qcow2/cluster-$cs" "out/c$cs.qcow2" src/top.qcow2 qcow2
    done
    run_ok qcow2/c-zlib "$IMGCTL" convert -c -O qcow2 src/plain.qcow2 out/cz.qcow2 &&
        judge qcow2/c-zlib out/cz.qcow2 src/pattern.raw qcow2
    run_ok qcow2/c-zstd "$IMGCTL" convert -c -O qcow2 -o compression_type=zstd src/pattern.vmdk out/cs.qcow2 &&
        judge qcow2/c-zstd out/cs.qcow2 src/pattern.raw qcow2
    if [ -e out/cz.qcow2 ] && [ "$(stat -c %s out/cz.qcow2)" -lt "$(stat -c %s out/a.qcow2)" ]; then
        pass qcow2/c-is-smaller
    else
        fail qcow2/c-is-smaller "-c output is not smaller than the plain one"
    fi
    run_ok qcow2/concat "$IMGCTL" convert -O qcow2 src/small.qcow2 src/plain.qcow2 src/pattern.vdi out/concat.qcow2 &&
        judge qcow2/concat out/concat.qcow2 out/qemu-concat.raw qcow2
    run_ok qcow2/S0 "$IMGCTL" convert -S 0 -O qcow2 src/plain.qcow2 out/s0.qcow2 &&
        judge qcow2/S0 out/s0.qcow2 src/pattern.raw qcow2
    qemu-img create -q -f qcow2 out/existing.qcow2 64M && qio out/existing.qcow2 qcow2 "write -P 0xee 0 64M"
    run_ok qcow2/existing "$IMGCTL" convert -n -O qcow2 src/zero.qcow2 out/existing.qcow2 &&
        judge qcow2/existing out/existing.qcow2 src/zero.qcow2 qcow2
    # -B: the new image holds only what differs from its backing file.
    cp src/base.qcow2 src/mid.qcow2 src/top.qcow2 out/
    run_ok qcow2/B "$IMGCTL" convert -O qcow2 -B mid.qcow2 -F qcow2 out/top.qcow2 out/newtop.qcow2 &&
        judge qcow2/B out/newtop.qcow2 src/top.qcow2 qcow2
    nb=$(qemu-img map -U --output=json out/newtop.qcow2 | jq '[.[] | select(.depth == 0 and .data) | .length] | add // 0')
    if [ "$nb" -le $((2 * M)) ]; then
        pass qcow2/B-copies-only-differences
    else
        fail qcow2/B-copies-only-differences "$nb data bytes in the overlay (top has about 1 MiB of its own)"
    fi
    bf=$(qemu-img info -U --output=json out/newtop.qcow2 | jq -r '."backing-filename"')
    [ "$bf" = mid.qcow2 ] && pass qcow2/B-records-backing || fail qcow2/B-records-backing "backing-filename is '$bf'"
    run_ok qcow2/B-other-base "$IMGCTL" convert -O qcow2 -B base.qcow2 out/top.qcow2 out/newtop2.qcow2 &&
        judge qcow2/B-other-base out/newtop2.qcow2 src/top.qcow2 qcow2
    run_ok qcow2/B-compressed "$IMGCTL" convert -c -O qcow2 -B base.qcow2 out/top.qcow2 out/newtop3.qcow2 &&
        judge qcow2/B-compressed out/newtop3.qcow2 src/top.qcow2 qcow2
else
    say "note: the qcow2 writer is not there yet; qcow2 outputs not tested"
fi

# ---------------------------------------------------------------------------
# Bad input: a clear message naming the file, non-zero exit, nothing left.

# expect_fail CASE PATTERN DST CMD...: fails, says PATTERN, leaves no DST.
expect_fail() {
    local name=$1 pat=$2 dst=$3 rc
    shift 3
    tmo "$@" >"$T/out.txt" 2>"$T/err.txt"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        fail "$name" "succeeded"
    elif [ "$rc" -ge 124 ]; then
        fail "$name" "exit status $rc (crash or hang): $(head -c 300 "$T/err.txt")"
    elif ! grep -q -- "$pat" "$T/err.txt"; then
        fail "$name" "message lacks '$pat': $(head -c 300 "$T/err.txt" | tr '\n' ' ')"
    elif [ -n "$dst" ] && [ -e "$dst" ]; then
        fail "$name" "$dst was left behind"
    else
        pass "$name"
    fi
}

cp src/plain.qcow2 src/truncated.qcow2
truncate -s $((3 * M)) src/truncated.qcow2
expect_fail bad/truncated-source truncated.qcow2 out/bad1.raw "$IMGCTL" convert -O raw src/truncated.qcow2 out/bad1.raw
cp src/plain.qcow2 src/corrupt.qcow2
python3 - src/corrupt.qcow2 <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(40)                       # l1_table_offset
    f.write(struct.pack(">Q", 1 << 50))
PY
expect_fail bad/corrupt-source corrupt.qcow2 out/bad2.raw "$IMGCTL" convert -O raw src/corrupt.qcow2 out/bad2.raw
expect_fail bad/missing-source nothere.qcow2 out/bad3.raw "$IMGCTL" convert src/nothere.qcow2 out/bad3.raw
qemu-img create -q -f qcow2 -b gone.qcow2 -F qcow2 -u src/orphan.qcow2 16M
expect_fail bad/missing-backing gone.qcow2 out/bad4.raw "$IMGCTL" convert -O raw src/orphan.qcow2 out/bad4.raw
expect_fail bad/unknown-option frobnicate out/bad5.raw "$IMGCTL" convert -O raw -o frobnicate=1 src/small.qcow2 out/bad5.raw
expect_fail bad/unknown-format nosuchfmt out/bad6.raw "$IMGCTL" convert -O nosuchfmt src/small.qcow2 out/bad6.raw
expect_fail bad/sparse-size "sparse" out/bad7.raw "$IMGCTL" convert -S 1000 src/small.qcow2 out/bad7.raw
expect_fail bad/raw-compressed "ompression" out/bad8.raw "$IMGCTL" convert -c -O raw src/small.qcow2 out/bad8.raw
expect_fail bad/dst-is-source "source" "" "$IMGCTL" convert -O raw src/pattern-sparse.raw src/pattern-sparse.raw
if qemu-img compare -q src/pattern-sparse.raw src/pattern.raw; then
    pass bad/dst-is-source-untouched
else
    fail bad/dst-is-source-untouched "the source was overwritten"
fi
mkdir -p ro
chmod 555 ro
# root ignores modes: make the folder immutable where the file system allows.
chattr +i ro 2>/dev/null
if touch ro/x 2>/dev/null; then
    rm -f ro/x
    say "note: cannot make a read-only folder here; read-only case skipped"
else
    expect_fail bad/readonly-folder "ro/out.raw" ro/out.raw "$IMGCTL" convert -O raw src/small.qcow2 ro/out.raw
fi
chattr -i ro 2>/dev/null

# A full file system: 8 MiB of tmpfs for 16 MiB of data.
mkdir -p full
if mount -t tmpfs -o size=8M tmpfs full 2>/dev/null; then
    LOOP_MNTS+=("$T/full")
    qemu-img create -q -f qcow2 src/big.qcow2 32M && qio src/big.qcow2 qcow2 "write -P 0x42 0 16M"
    expect_fail bad/enospc "No space left" full/out.raw "$IMGCTL" convert -O raw src/big.qcow2 full/out.raw
    if grep -q "removed" "$T/err.txt"; then
        pass bad/enospc-says-removed
    else
        fail bad/enospc-says-removed "the message does not say the destination was removed: $(tr '\n' ' ' <"$T/err.txt")"
    fi
    umount full && LOOP_MNTS=()
else
    say "note: cannot mount a tmpfs here; ENOSPC case skipped"
fi

# A destination held by another process is not truncated.
if command -v qemu-io >/dev/null; then
    cp src/small.qcow2 out/held.qcow2
    (cd out && qemu-io -f qcow2 held.qcow2 -c "sleep 5000" >/dev/null 2>&1) &
    held_pid=$!
    BG_PIDS+=("$held_pid")
    sleep 1
    before=$(sha256sum <out/held.qcow2)
    tmo "$IMGCTL" convert -O raw src/plain.qcow2 out/held.qcow2 >"$T/out.txt" 2>"$T/err.txt"
    rc=$?
    if [ "$rc" -ne 0 ] && grep -q "in use" "$T/err.txt" && [ "$before" = "$(sha256sum <out/held.qcow2)" ]; then
        pass bad/dst-in-use
    else
        fail bad/dst-in-use "rc=$rc, $(head -c 300 "$T/err.txt" | tr '\n' ' ')"
    fi
    kill "$held_pid" 2>/dev/null
    wait "$held_pid" 2>/dev/null
fi

finish
