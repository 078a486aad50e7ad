#!/usr/bin/env bash
# Crash safety: `imgctl convert -O qcow2` and `imgctl commit` are killed with
# SIGKILL at a random moment, CRASH_RUNS times each (default 5; the bench or
# `CRASH_RUNS=50` runs more).  Then:
#   convert: `qemu-img check` of the destination finds no corruption (leaks
#            are allowed: clusters allocated but not yet referenced);
#   commit:  the base passes `qemu-img check` the same way, every 64 KiB block
#            of the base reads either as before or as the overlay (never
#            anything else), and the overlay still reads exactly as before.
# Commit is run into a raw base always, and into a qcow2 base (and convert to
# qcow2) once the qcow2 writer is there.
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io python3 || finish
IMGCTL=$BUILD/imgctl
if [ ! -x "$IMGCTL" ]; then
    fail setup "$IMGCTL is missing (run make)"
    finish
fi
RUNS=${CRASH_RUNS:-5}
M=$((1 << 20))

# Scattered data: 96 pieces of 256 KiB..1 MiB over 256 MiB, mixed content.
python3 - src.raw <<'PY' || fail setup "python could not write the source"
import random, sys
r = random.Random(11)
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(256 * M)
    for i in range(96):
        off = r.randrange(0, 255 * M) & ~511
        n = r.choice((256 << 10, 512 << 10, M))
        f.seek(off)
        f.write(r.randbytes(n) if i % 3 else bytes([i]) * n)
PY
qemu-img convert -q -O qcow2 src.raw src.qcow2 || fail setup "qemu-img convert"

# check_image CASE IMG: no corruption (exit 0 clean, 3 leaks only).
check_image() {
    local name=$1 img=$2 rc
    qemu-img check -U "$img" >"$T/check.txt" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ]; then
        return 0
    fi
    fail "$name" "qemu-img check exit $rc: $(grep -v '^$' "$T/check.txt" | head -n 4 | tr '\n' ' ')"
    return 1
}

# Milliseconds a full run takes, so that kills land all along it.
time_ms() {
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000 + 1))
}

# kill_at_random MS CMD...: start CMD, SIGKILL it after a random part of MS.
kill_at_random() {
    local ms=$1 pid delay
    shift
    "$@" >/dev/null 2>&1 &
    pid=$!
    delay=$((RANDOM % (ms + ms / 4 + 1)))
    sleep "$(awk -v d="$delay" 'BEGIN { printf "%.3f", d / 1000 }')"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

# blocks_old_or_new CASE BEFORE AFTER NEW: every 4 KiB page of AFTER equals
# that of BEFORE or of NEW (all raw).  Pages, not clusters: a SIGKILL can cut
# a large pwrite short between two pages, so a cluster may be half written;
# a page is copied whole.
blocks_old_or_new() {
    python3 - "$2" "$3" "$4" <<'PY'
import sys
B = 4096
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b, open(sys.argv[3], "rb") as n:
    off = 0
    while True:
        x, y, z = a.read(B), b.read(B), n.read(B)
        if not y and not x:
            break
        if y != x and y != z:
            print("block at byte %d is neither the old base nor the overlay" % off)
            sys.exit(1)
        off += B
PY
}

# ---- commit: overlay over a base ------------------------------------------

# commit_crash CASE BASEFMT
commit_crash() {
    local name=$1 bfmt=$2 ms i bad=0
    qemu-img convert -q -O "$bfmt" src.raw base0."$bfmt"
    qemu-img create -q -f qcow2 -b base0."$bfmt" -F "$bfmt" top0.qcow2
    qio top0.qcow2 qcow2 "write -P 0x6b $((3 * M)) $((40 * M))" "write -z $((100 * M)) $((8 * M))" \
        "write -P 0x6c $((150 * M + 4096)) $((30 * M))" "write -P 0x6d $((255 * M)) $M" ||
        { fail "$name" "could not build the overlay"; return; }
    qemu-img convert -O raw top0.qcow2 want-top.raw
    prep() {
        cp base0."$bfmt" base."$bfmt"
        cp top0.qcow2 top.qcow2
        qemu-img rebase -q -u -b base."$bfmt" -F "$bfmt" top.qcow2
    }
    prep
    ms=$(time_ms "$IMGCTL" commit -d top.qcow2)
    for ((i = 1; i <= RUNS; i++)); do
        prep
        kill_at_random "$ms" "$IMGCTL" commit -d top.qcow2
        if [ "$bfmt" = qcow2 ] && ! check_image "$name/run$i/base-check" base.qcow2; then
            bad=1
            continue
        fi
        qemu-img convert -U -O raw base."$bfmt" after.raw
        if ! msg=$(blocks_old_or_new "$name" src.raw after.raw want-top.raw); then
            fail "$name/run$i/base-blocks" "$msg"
            bad=1
        elif ! qemu-img compare -U want-top.raw top.qcow2 >/dev/null 2>&1; then
            fail "$name/run$i/overlay" "the overlay no longer reads as before"
            bad=1
        fi
        rm -f after.raw
    done
    [ "$bad" -eq 0 ] && pass "$name ($RUNS kills, ${ms} ms a run)"
}

commit_crash commit-into-raw raw

have_qcow2_writer=false
"$IMGCTL" convert -O qcow2 src.qcow2 probe.qcow2 >/dev/null 2>&1 && have_qcow2_writer=true
rm -f probe.qcow2

if $have_qcow2_writer; then
    commit_crash commit-into-qcow2 qcow2

    # ---- convert -O qcow2 (plain and compressed) ---------------------------
    for mode in plain compressed; do
        args=(-O qcow2)
        [ $mode = compressed ] && args+=(-c)
        ms=$(time_ms "$IMGCTL" convert "${args[@]}" src.qcow2 dst.qcow2)
        bad=0
        for ((i = 1; i <= RUNS; i++)); do
            rm -f dst.qcow2
            kill_at_random "$ms" "$IMGCTL" convert "${args[@]}" src.qcow2 dst.qcow2
            # Killed before create wrote a header: nothing to check.
            [ -e dst.qcow2 ] && [ "$(stat -c %s dst.qcow2)" -ge 512 ] || continue
            check_image "convert-$mode/run$i" dst.qcow2 || bad=1
        done
        [ "$bad" -eq 0 ] && pass "convert-$mode ($RUNS kills, ${ms} ms a run)"
        # An uninterrupted run is exact.
        rm -f dst.qcow2
        if "$IMGCTL" convert "${args[@]}" src.qcow2 dst.qcow2 && check_image "convert-$mode/full" dst.qcow2 &&
            qemu-img compare -U src.raw dst.qcow2 >/dev/null; then
            pass "convert-$mode/full"
        else
            fail "convert-$mode/full" "an uninterrupted convert is not exact"
        fi
    done
else
    say "note: the qcow2 writer is not there yet; convert -O qcow2 and commit into qcow2 not crash-tested"
fi

finish
