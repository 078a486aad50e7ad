#!/usr/bin/env bash
# imgctl compare / create / resize / check against qemu-img, and bad input:
# one clear line, a non-zero exit, no file left behind.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

IMGCTL=$BUILD/imgctl
need setup qemu-img qemu-io python3 || finish
if [ ! -x "$IMGCTL" ]; then
    fail setup "$IMGCTL is missing (run make)"
    finish
fi

# same_compare CASE ARGS...: exit code and stdout of compare agree with qemu-img's.
same_compare() {
    local name=$1 ours theirs
    shift
    ours=$("$IMGCTL" compare "$@" 2>&1)
    local rc_ours=$?
    theirs=$(qemu-img compare "$@" 2>&1)
    local rc_qemu=$?
    if [ "$rc_ours" = "$rc_qemu" ] && [ "$ours" = "$theirs" ]; then
        pass "$name"
    else
        fail "$name" "ours ($rc_ours) '$ours' qemu ($rc_qemu) '$theirs'"
    fi
}

# ---- compare ----
qemu-img create -q -f qcow2 a.qcow2 8M && qio a.qcow2 qcow2 "write -P 0x61 1M 64k" &&
    qemu-img convert -O raw a.qcow2 a.raw && qemu-img convert -O qcow2 a.qcow2 same.qcow2 &&
    qemu-img create -q -f qcow2 diff.qcow2 8M && qio diff.qcow2 qcow2 "write -P 0x61 1M 64k" \
        "write -P 0x62 $((1048576 + 5000)) 1" &&
    qemu-img create -q -f qcow2 big.qcow2 12M && qio big.qcow2 qcow2 "write -P 0x61 1M 64k" &&
    qemu-img create -q -f qcow2 bigdata.qcow2 12M &&
    qio bigdata.qcow2 qcow2 "write -P 0x61 1M 64k" "write -P 0x63 10M 512" &&
    qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 over.qcow2 &&
    qio over.qcow2 qcow2 "write -P 0x64 4M 4k" || fail compare-setup "qemu could not build the pairs"
same_compare compare-same a.qcow2 same.qcow2
same_compare compare-qcow2-raw a.qcow2 a.raw
same_compare compare-different a.qcow2 diff.qcow2
same_compare compare-size-zero-tail a.qcow2 big.qcow2
same_compare compare-size-data-tail a.qcow2 bigdata.qcow2
same_compare compare-size-strict -s a.qcow2 big.qcow2
same_compare compare-overlay over.qcow2 a.qcow2
same_compare compare-formats -f qcow2 -F raw a.qcow2 a.raw
"$IMGCTL" compare a.qcow2 missing.qcow2 >/dev/null 2>err.txt
check compare-missing "exit 2 with one line" -- test $? = 2 -a "$(wc -l <err.txt)" = 1

# ---- create ----
"$IMGCTL" create -q -f raw r.raw 1536k && qemu-img create -q -f raw q.raw 1536k &&
    check create-raw "differs from qemu-img's" -- cmp -s r.raw q.raw
out=$("$IMGCTL" create -f raw r2.raw 1.5G) && theirs=$(qemu-img create -f raw q2.raw 1.5G) &&
    check create-message "'$out' vs '${theirs//q2/r2}'" -- test "$out" = "${theirs//q2/r2}"
check create-raw-size "size of r2.raw" -- test "$(stat -c %s r2.raw)" = $((3 << 29))
"$IMGCTL" create -q -f raw -o preallocation=full full.raw 256k &&
    check create-prealloc-full "not allocated" -- test "$(stat -c %b full.raw)" -ge 512
out=$("$IMGCTL" create -f raw -o help)
check create-help "no option list" -- grep -q '^  size=<size>' <<<"$out"
for bad in "12x" "1.5" "9E" ""; do
    "$IMGCTL" create -f raw bad.raw "$bad" >/dev/null 2>err.txt
    rc=$?
    check "create-bad-size-${bad:-empty}" "rc $rc, $(cat err.txt)" -- \
        test "$rc" != 0 -a ! -e bad.raw -a "$(wc -l <err.txt)" = 1
done
"$IMGCTL" create -f raw -o nosuch=1 bad.raw 1M >/dev/null 2>err.txt
check create-bad-option "$(cat err.txt)" -- \
    sh -c "grep -q \"Invalid parameter 'nosuch'\" err.txt && test ! -e bad.raw"
"$IMGCTL" create -f qcow2 -b nothere.qcow2 -F qcow2 bad.qcow2 >/dev/null 2>err.txt
check create-missing-backing "$(cat err.txt)" -- test ! -e bad.qcow2 -a "$(wc -l <err.txt)" = 1
"$IMGCTL" create -f nosuchfmt bad.img 1M >/dev/null 2>err.txt
check create-bad-format "$(cat err.txt)" -- grep -q "Unknown file format 'nosuchfmt'" err.txt
mkdir ro && chmod 555 ro
if [ "$(id -u)" != 0 ]; then
    "$IMGCTL" create -f raw ro/x.raw 1M >/dev/null 2>err.txt
    check create-read-only-dir "$(cat err.txt)" -- test ! -e ro/x.raw -a -s err.txt
fi

# ---- resize ----
"$IMGCTL" create -q -f raw grow.raw 1M && qio grow.raw raw "write -P 0x71 0 4k" &&
    "$IMGCTL" resize -f raw grow.raw +1M >/dev/null &&
    check resize-grow "size" -- test "$(stat -c %s grow.raw)" = $((2 << 20))
"$IMGCTL" resize -f raw grow.raw 512k >/dev/null 2>err.txt
check resize-shrink-refused "$(cat err.txt)" -- grep -q -- "--shrink" err.txt
out=$("$IMGCTL" resize -f raw --shrink grow.raw -- -1536k)
check resize-shrink "$out; size $(stat -c %s grow.raw)" -- \
    test "$out" = "Image resized." -a "$(stat -c %s grow.raw)" = 524288
"$IMGCTL" resize -f raw --shrink grow.raw -1M >/dev/null 2>&1
check resize-below-zero "exit $?" -- test $? != 0
qemu-img convert -O raw grow.raw ref.raw && qemu-img create -q -f raw want.raw 512k &&
    qio want.raw raw "write -P 0x71 0 4k" && check resize-content "content" -- cmp -s ref.raw want.raw

# ---- check ----
"$IMGCTL" check -f raw grow.raw >/dev/null 2>err.txt
rc=$?
qemu-img check -f raw grow.raw >/dev/null 2>&1
check check-unsupported "rc $rc (qemu $?), $(cat err.txt)" -- test "$rc" = 63
"$IMGCTL" check -r bogus a.qcow2 >/dev/null 2>&1
check check-bad-repair "exit" -- test $? = 1

# ---- usage ----
for cmd in info map check compare create resize; do
    "$IMGCTL" "$cmd" --help >help.txt 2>&1
    check "help-$cmd" "no usage" -- grep -q "^usage: imgctl $cmd" help.txt
done
"$IMGCTL" info --output=xml a.qcow2 >/dev/null 2>err.txt
check bad-output "$(cat err.txt)" -- grep -q "output must be used with human or json" err.txt
"$IMGCTL" map --nosuch a.qcow2 >/dev/null 2>err.txt
check bad-option "$(cat err.txt)" -- grep -q "unrecognized option '--nosuch'" err.txt
"$IMGCTL" info missing.qcow2 >/dev/null 2>err.txt
check info-missing "$(cat err.txt)" -- grep -q "^imgctl: Could not open 'missing.qcow2'" err.txt

# A file name that needs escaping comes out as qemu-img writes it.
name=$'we"ird\\na\xc3\xa9me.qcow2'
cp a.qcow2 "$name" && "$IMGCTL" info --output=json "$name" >ours.json &&
    qemu-img info --output=json "$name" >qemu.json &&
    check json-escaping "$(diff <(grep filename ours.json) <(grep filename qemu.json))" -- \
        test "$(grep filename ours.json)" = "$(grep filename qemu.json)"
finish
