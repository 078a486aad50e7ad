# shellcheck shell=bash
# Shared helpers of the imgfs integration tests.  Sourced by every
# tests/integration/test-*.sh, which run-all.sh starts with:
#   BUILD    absolute build folder (imgfs at $BUILD/imgfs, tools at $BUILD/tools)
#   T        the test's own `mktemp -d` folder (the current directory)
#   RESULTS  file that collects one "PASS name" / "FAIL name: why" line a case
# A test may also be run alone: `bash tests/integration/test-x.sh [BUILD]`.
#
# Every test writes only inside $T.  The EXIT trap unmounts every loop mount and
# FUSE mount the test made, detaches its loop devices, stops the processes it
# started (by PID) and removes $T.

set -u

LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LIB_DIR/../.." && pwd)
TEST_NAME=$(basename "$0" .sh)
TEST_NAME=${TEST_NAME#test-}

BUILD=${BUILD:-${1:-build}}
case $BUILD in
    /*) ;;
    *) BUILD=$REPO_ROOT/$BUILD ;;
esac
SEEKMAP=$BUILD/tools/seekmap
MAP2RANGES=$LIB_DIR/qemu-map-ranges.py
SHA256=$LIB_DIR/sha256.py

if [ -z "${T:-}" ]; then
    T=$(mktemp -d)
fi
T=$(realpath "$T")
RESULTS=${RESULTS:-$T/results}
cd "$T" || exit 1

# No single operation on a mount may take longer than this (a hang is a
# failure, never a stuck suite).
OP_TIMEOUT=${OP_TIMEOUT:-120}

N_PASS=0
N_FAIL=0
MOUNTS=()      # FUSE mount points, in mount order
MOUNT_PIDS=()  # the imgfs PID of each
LOOP_MNTS=()   # loop-device mounts to unmount
LOOP_DEVS=()   # loop devices to detach
BG_PIDS=()     # other processes we started (qemu-io, ...)
IMGFS_PID=
IMGFS_LOG=
# shellcheck disable=SC2034  # read by the tests after mount_imgfs fails
IMGFS_ERR=

say() { printf '%s\n' "$*"; }

pass() {
    N_PASS=$((N_PASS + 1))
    say "PASS $TEST_NAME/$1"
    say "PASS $TEST_NAME/$1" >>"$RESULTS"
}

# fail CASE WHY...
fail() {
    local name=$1
    shift
    N_FAIL=$((N_FAIL + 1))
    say "FAIL $TEST_NAME/$name: $*"
    say "FAIL $TEST_NAME/$name: $*" >>"$RESULTS"
}

# check CASE WHY -- CMD...: pass when CMD succeeds, else fail with WHY.
check() {
    local name=$1 why=$2
    shift 3
    if "$@"; then
        pass "$name"
    else
        fail "$name" "$why"
    fi
}

# tmo CMD...: run CMD with the per-operation time limit.
tmo() {
    timeout -k 5 "$OP_TIMEOUT" "$@"
}

# need CASE CMD...: fail CASE (and return 1) when a command is missing.
need() {
    local name=$1 c missing=
    shift
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
    done
    if [ -n "$missing" ]; then
        fail "$name" "prerequisite missing:$missing"
        return 1
    fi
    return 0
}

# need_build CASE: imgfs and the test tools must have been built.
need_build() {
    local name=$1 ok=0
    if [ ! -x "$BUILD/imgfs" ]; then
        fail "$name" "$BUILD/imgfs is missing (run make)"
        ok=1
    fi
    if [ ! -x "$SEEKMAP" ]; then
        fail "$name" "$SEEKMAP is missing (run make)"
        ok=1
    fi
    return $ok
}

is_mounted() {
    awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo
}

# alive PID: the process runs (a zombie child does not count).
alive() {
    local st
    [ -r "/proc/$1/stat" ] || return 1
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# mount_imgfs SRC MNT [imgfs options...]: start `imgfs -f` in the background,
# wait for the mount.  Sets IMGFS_PID and IMGFS_LOG (its stdout+stderr); on
# failure returns 1 with the reason in IMGFS_ERR.
mount_imgfs() {
    local src=$1 mnt=$2 i
    shift 2
    IMGFS_ERR=
    if [ ! -x "$BUILD/imgfs" ]; then
        IMGFS_ERR="$BUILD/imgfs is missing (run make)"
        return 1
    fi
    mkdir -p "$mnt"
    mnt=$(realpath "$mnt")
    IMGFS_LOG=$T/imgfs.$((${#MOUNTS[@]} + 1)).log
    "$BUILD/imgfs" -f "$@" "$src" "$mnt" >"$IMGFS_LOG" 2>&1 &
    IMGFS_PID=$!
    MOUNTS+=("$mnt")
    MOUNT_PIDS+=("$IMGFS_PID")
    for ((i = 0; i < 150; i++)); do
        if is_mounted "$mnt"; then
            return 0
        fi
        if ! alive "$IMGFS_PID"; then
            IMGFS_ERR="imgfs exited before mounting: $(tail -n 5 "$IMGFS_LOG" | tr '\n' ' ')"
            return 1
        fi
        sleep 0.1
    done
    # shellcheck disable=SC2034
    IMGFS_ERR="no mount at $mnt after 15 s: $(tail -n 5 "$IMGFS_LOG" | tr '\n' ' ')"
    return 1
}

# The FUSE connection number of a mount (for /sys/fs/fuse/connections),
# read from mountinfo so that a hung daemon cannot block us.
fuse_conn() {
    awk -v m="$1" '$5 == m { split($3, d, ":"); print d[2]; exit }' /proc/self/mountinfo
}

unmount_fuse() {
    local mnt=$1 conn
    is_mounted "$mnt" || return 0
    timeout -k 2 20 fusermount3 -u "$mnt" 2>/dev/null ||
        timeout -k 2 20 umount "$mnt" 2>/dev/null ||
        umount -l "$mnt" 2>/dev/null
    if is_mounted "$mnt"; then
        conn=$(fuse_conn "$mnt")
        if [ -n "$conn" ] && [ -w "/sys/fs/fuse/connections/$conn/abort" ]; then
            echo 1 >"/sys/fs/fuse/connections/$conn/abort"
        fi
        umount -l "$mnt" 2>/dev/null
    fi
    ! is_mounted "$mnt"
}

stop_pid() {
    local pid=$1 i
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        kill "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
    fi
    alive "$pid" && kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# umount_imgfs MNT: unmount one of our mounts now and stop its daemon.
umount_imgfs() {
    local mnt i
    mnt=$(realpath "$1")
    for i in "${!MOUNTS[@]}"; do
        if [ "${MOUNTS[$i]}" = "$mnt" ]; then
            unmount_fuse "$mnt"
            stop_pid "${MOUNT_PIDS[$i]}"
            unset 'MOUNTS[i]' 'MOUNT_PIDS[i]'
        fi
    done
}

# loop_attach FILE: attach read-only, print the device, remember it.
loop_attach() {
    local dev
    dev=$(tmo losetup -r -f --show "$1") || return 1
    LOOP_DEVS+=("$dev")
    printf '%s\n' "$dev"
}

# loop_detach DEV: detach now and forget it (the number may be reused by
# someone else afterwards: the trap must not detach it again).
loop_detach() {
    local i
    losetup -d "$1" || return 1
    for i in "${!LOOP_DEVS[@]}"; do
        [ "${LOOP_DEVS[$i]}" = "$1" ] && unset 'LOOP_DEVS[i]'
    done
    return 0
}

# bg_start CMD...: start a helper process in the background and remember it.
bg_start() {
    "$@" &
    BG_PIDS+=("$!")
}

cleanup() {
    local rc=$? m d p i
    set +e
    trap - EXIT INT TERM
    for ((i = ${#LOOP_MNTS[@]} - 1; i >= 0; i--)); do
        m=${LOOP_MNTS[$i]}
        if is_mounted "$m"; then
            timeout 20 umount "$m" 2>/dev/null || umount -l "$m"
        fi
    done
    for d in "${LOOP_DEVS[@]}"; do
        losetup -d "$d" 2>/dev/null
    done
    for p in "${BG_PIDS[@]}"; do
        if alive "$p"; then
            kill "$p" 2>/dev/null
        fi
        stop_pid "$p"
    done
    # Newest first: a mount may serve files to one made after it (faultfs).
    local idx=("${!MOUNTS[@]}")
    for ((d = ${#idx[@]} - 1; d >= 0; d--)); do
        i=${idx[$d]}
        unmount_fuse "${MOUNTS[$i]}" || say "cleanup: could not unmount ${MOUNTS[$i]}"
        stop_pid "${MOUNT_PIDS[$i]}"
    done
    # A sanitizer build (build-asan) reports into the daemon's log.
    for m in "$T"/imgfs.*.log; do
        [ -s "$m" ] || continue
        if grep -q -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$m"; then
            fail "sanitizer:$(basename "$m" .log)" "$(grep -m 1 -E 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$m")"
        fi
    done
    if [ "$N_FAIL" -gt 0 ]; then
        for m in "$T"/imgfs.*.log; do
            [ -s "$m" ] || continue
            say "--- last lines of $(basename "$m") ---"
            tail -n 15 "$m"
        done
    fi
    cd / || true
    if [ -z "${KEEP_TMP:-}" ]; then
        if awk -v t="$T/" 'index($5 "/", t) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
            say "cleanup: a mount is still inside $T; not removing it"
        else
            rm -rf --one-file-system "$T"
        fi
    else
        say "kept $T"
    fi
    if [ "$rc" -eq 0 ] && [ "$N_FAIL" -gt 0 ]; then
        rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# finish: the test's last line.
finish() {
    say "== $TEST_NAME done: $N_PASS ok, $N_FAIL not ok"
    [ "$N_FAIL" -eq 0 ]
    exit $?
}

# ---------------------------------------------------------------------------
# Oracle: what qemu says about an image.

# qimg ARGS... IMG: qemu-img run from the folder of IMG (the last argument),
# which it gets as a bare name (see qio).
qimg() {
    local img=${*: -1}
    local args=("${@:1:$#-1}")
    (cd "$(dirname "$img")" && tmo qemu-img "${args[@]}" "$(basename "$img")")
}

# ref_image NAME IMG: record qemu's answers in $T/ref/NAME.{sha,ranges,size,data}.
# Returns 1 (with a FAIL) when qemu itself cannot read the image.
ref_image() {
    local name=$1 img=$2 out
    mkdir -p "$T/ref"
    img=$(realpath "$img")
    printf '%s\n' "$img" >"$(refp "$name").img"
    out=$(refp "$name").raw
    if ! (cd "$(dirname "$img")" && tmo qemu-img convert -U -O raw "$(basename "$img")" "$out") 2>"$(refp "$name").err"; then
        fail "$name/ref" "qemu-img convert failed: $(head -c 300 "$(refp "$name").err")"
        return 1
    fi
    python3 "$SHA256" "$out" >"$(refp "$name").sha"
    rm -f "$out"
    if ! qimg map -U --output=json "$img" >"$(refp "$name").map.json" 2>"$(refp "$name").err" ||
        ! python3 "$MAP2RANGES" "$(refp "$name").map.json" >"$(refp "$name").ranges"; then
        fail "$name/ref" "qemu-img map failed: $(head -c 300 "$(refp "$name").err")"
        return 1
    fi
    qimg info -U --output=json "$img" | jq -r '."virtual-size"' >"$(refp "$name").size"
    ranges_total "$(refp "$name").ranges" >"$(refp "$name").data"
    return 0
}

# ref_from NAME SHA SIZE MAPJSON: the same record from given answers (manifest).
ref_from() {
    local name=$1
    mkdir -p "$T/ref"
    printf '%s\n' "$2" >"$(refp "$name").sha"
    printf '%s\n' "$3" >"$(refp "$name").size"
    python3 "$MAP2RANGES" "$4" >"$(refp "$name").ranges" || return 1
    ranges_total "$(refp "$name").ranges" >"$(refp "$name").data"
}

# ref_alias NEW OLD: the same reference under another case name.
ref_alias() {
    local f old new
    old=$(refp "$2")
    new=$(refp "$1")
    for f in "$old".*; do
        cp "$f" "$new.${f#"$old".}"
    done
}

# refp NAME: where the reference files of case NAME live (NAME may hold "/").
refp() {
    printf '%s/ref/%s' "$T" "${1//\//__}"
}

ranges_total() {
    awk '{ s += $2 } END { printf "%d\n", s }' "$1"
}

# allocated FILE: bytes the file occupies on its file system.
allocated() {
    stat -c '%b %B' "$1" | awk '{ printf "%d\n", $1 * $2 }'
}

# ---------------------------------------------------------------------------
# The five checks of one view against qemu's answers (ref_image first).
#
# check_view NAME VIEW CLUSTER [CHECKS]
#   CHECKS: words from "sha map stat cp tar" (default: all)
#   sha   sha256 of the view == sha256 of `qemu-img convert -O raw`
#   map   seekmap of the view == data ranges of `qemu-img map`
#   stat  st_size == virtual size; data <= st_blocks*512 <= data + slack
#   cp    cp --sparse=always of the view: same bytes, allocated <= data + slack
#   tar   tar -S, extracted: same bytes, allocated <= data + slack
# Slack: one cluster (at least a 4 KiB block) for st_blocks; for the copies,
# two file-system blocks a data range (ranges need not be block aligned) plus
# one cluster.
check_view() {
    local name=$1 view=$2 cluster=$3 checks=${4:-sha map stat cp tar}
    local want_sha want_size want_data slack nranges cslack got c
    want_sha=$(cat "$(refp "$name").sha")
    want_size=$(cat "$(refp "$name").size")
    want_data=$(cat "$(refp "$name").data")
    slack=$cluster
    [ "$slack" -lt 4096 ] && slack=4096
    nranges=$(wc -l <"$(refp "$name").ranges")
    cslack=$((nranges * 8192 + slack))
    if [ ! -e "$view" ]; then
        # shellcheck disable=SC2012
        fail "$name" "view $view does not exist (listing: $(ls -A "$(dirname "$view")" 2>&1 | tr '\n' ' '))"
        return 1
    fi
    for c in $checks; do
        case $c in
        sha)
            got=$(tmo python3 "$SHA256" "$view" 2>"$T/err.txt")
            if [ "$got" = "$want_sha" ]; then
                pass "$name/sha"
            else
                fail "$name/sha" "sha256 of view is '${got:-<read failed: $(tail -n 1 "$T/err.txt")>}', want $want_sha"
                cmp_first_diff "$name" "$view"
            fi
            ;;
        map)
            if ! tmo "$SEEKMAP" "$view" >"$(refp "$name").view-ranges" 2>"$T/err.txt"; then
                fail "$name/map" "seekmap failed: $(head -c 300 "$T/err.txt")"
            elif cmp -s "$(refp "$name").view-ranges" "$(refp "$name").ranges"; then
                pass "$name/map"
            else
                fail "$name/map" "SEEK_DATA/SEEK_HOLE ranges differ from qemu-img map (-qemu +view): $(diff "$(refp "$name").ranges" "$(refp "$name").view-ranges" | grep '^[<>]' | head -n 6 | sed 's/^</-/; s/^>/+/' | tr '\n' ' ')"
            fi
            ;;
        stat)
            local st_size st_blocks
            read -r st_size st_blocks < <(tmo stat -c '%s %b' "$view")
            if [ "${st_size:-x}" != "$want_size" ]; then
                fail "$name/stat" "st_size ${st_size:-?} != virtual size $want_size"
            elif [ $((st_blocks * 512)) -lt "$want_data" ] ||
                [ $((st_blocks * 512)) -gt $((want_data + slack)) ]; then
                fail "$name/stat" "st_blocks*512 = $((st_blocks * 512)), qemu-img map has $want_data data bytes (allowed up to +$slack)"
            else
                pass "$name/stat"
            fi
            ;;
        cp)
            rm -f "$T/copy.raw"
            if ! tmo cp --sparse=always "$view" "$T/copy.raw" 2>"$T/err.txt"; then
                fail "$name/cp" "cp --sparse=always failed: $(head -c 300 "$T/err.txt")"
            else
                got=$(python3 "$SHA256" "$T/copy.raw")
                local alloc
                alloc=$(allocated "$T/copy.raw")
                if [ "$got" != "$want_sha" ]; then
                    fail "$name/cp" "copy's sha256 $got != $want_sha"
                elif [ "$alloc" -gt $((want_data + cslack)) ]; then
                    fail "$name/cp" "copy allocates $alloc bytes, data is $want_data (allowed up to +$cslack)"
                else
                    pass "$name/cp"
                fi
            fi
            rm -f "$T/copy.raw"
            ;;
        tar)
            rm -rf "$T/tarx" "$T/x.tar"
            mkdir -p "$T/tarx"
            if ! tmo tar -S -cf "$T/x.tar" -C "$(dirname "$view")" "$(basename "$view")" 2>"$T/err.txt"; then
                fail "$name/tar" "tar -S -cf failed: $(head -c 300 "$T/err.txt")"
            elif ! tar -xf "$T/x.tar" -C "$T/tarx" 2>"$T/err.txt"; then
                fail "$name/tar" "tar -xf failed: $(head -c 300 "$T/err.txt")"
            else
                local out alloc
                out=$T/tarx/$(basename "$view")
                got=$(python3 "$SHA256" "$out")
                alloc=$(allocated "$out")
                if [ "$got" != "$want_sha" ]; then
                    fail "$name/tar" "extracted sha256 $got != $want_sha"
                elif [ "$(stat -c %s "$out")" != "$want_size" ]; then
                    fail "$name/tar" "extracted size $(stat -c %s "$out") != $want_size"
                elif [ "$alloc" -gt $((want_data + cslack)) ]; then
                    fail "$name/tar" "extracted file allocates $alloc bytes, data is $want_data (allowed up to +$cslack): not sparse"
                else
                    pass "$name/tar"
                fi
            fi
            rm -rf "$T/tarx" "$T/x.tar"
            ;;
        esac
    done
}

# After a sha mismatch: say where the first differing byte is (needs the
# reference bytes again; only for small images).
cmp_first_diff() {
    local name=$1 view=$2 img
    img=$(cat "$(refp "$name").img" 2>/dev/null) || return 0
    (cd "$(dirname "$img")" && qemu-img convert -U -O raw "$(basename "$img")" "$T/diff.raw") 2>/dev/null || return 0
    say "    first difference: $(tmo cmp "$T/diff.raw" "$view" 2>&1 | head -n 1)"
    rm -f "$T/diff.raw"
}

# ---------------------------------------------------------------------------
# Image building.

# qio IMG FMT CMD...: run qemu-io commands (-c each) on IMG; fail loudly.
qio() {
    local img=$1 fmt=$2 a
    shift 2
    local args=()
    for a in "$@"; do
        args+=(-c "$a")
    done
    # From the image's folder: qemu resolves a relative data_file name
    # against the working directory (backing names against the image).
    if ! (cd "$(dirname "$img")" && qemu-io -f "$fmt" "${args[@]}" "$(basename "$img")") >"$T/qemu-io.log" 2>&1 ||
        grep -qi 'error\|failed' "$T/qemu-io.log"; then
        say "qemu-io on $img failed: $(head -c 400 "$T/qemu-io.log")"
        return 1
    fi
}

# write_patterns IMG FMT CLUSTER SIZE: patterns at scattered offsets:
# aligned, unaligned, straddling a cluster boundary, a multi-cluster run,
# real zero bytes (data, not a zero cluster) and the last 4 KiB.
write_patterns() {
    local img=$1 fmt=$2 c=$3 s=$4
    qio "$img" "$fmt" \
        "write -P 0xa1 0 512" \
        "write -P 0xa2 1000 3000" \
        "write -P 0xa3 $((c - 100)) 300" \
        "write -P 0xa4 $((3 * c + 7)) 5" \
        "write -P 0xa5 $((s / 2 - 777)) 2000" \
        "write -P 0xa6 $((s / 4)) $((3 * c))" \
        "write -P 0x00 $((s / 8)) $c" \
        "write -P 0xa7 $((s - 4096)) 4096"
}
