#!/usr/bin/env bash
# imgctl create against qemu-img for every format with a create entry: the
# option list of -o help, the "Formatting ..." line (a default create and
# ones with options), and what qemu-img info then reads from both images.
# The option lists come from the drivers' tables, so this is where a driver
# whose list drifts from qemu-img's shows up.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

IMGCTL=$BUILD/imgctl
need setup qemu-img python3 || finish
if [ ! -x "$IMGCTL" ]; then
    fail setup "$IMGCTL is missing (run make)"
    finish
fi

# option_names CMD...: the option names of a -o help listing, one a line.
option_names() {
    "$@" | sed -n 's/^  \([^=]*\)=<.*/\1/p'
}

# info_facts FILE: "format virtual-size" as qemu-img info reads FILE.
info_facts() {
    qemu-img info --output=json "$1" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["format"], d["virtual-size"])'
}

# ---- -o help lists the options qemu-img lists ----
for fmt in raw qcow2 vmdk vdi vpc; do
    ours=$(option_names "$IMGCTL" create -f "$fmt" -o help)
    theirs=$(option_names qemu-img create -f "$fmt" -o help)
    check "help-$fmt" "$(diff <(echo "$ours") <(echo "$theirs") | tr '\n' ' ')" -- \
        test -n "$ours" -a "$ours" = "$theirs"
    # With a file name qemu-img adds the host file's options.
    ours=$(option_names "$IMGCTL" create -f "$fmt" -o help "x.$fmt")
    theirs=$(option_names qemu-img create -f "$fmt" -o help "x.$fmt")
    check "help-file-$fmt" "$(diff <(echo "$ours") <(echo "$theirs") | tr '\n' ' ')" -- \
        test -n "$ours" -a "$ours" = "$theirs"
done
ours=$(option_names "$IMGCTL" convert -O vmdk -o help a.raw b.vmdk)
theirs=$(option_names qemu-img convert -O vmdk -o help a.raw b.vmdk)
check help-convert "$(diff <(echo "$ours") <(echo "$theirs") | tr '\n' ' ')" -- \
    test -n "$ours" -a "$ours" = "$theirs"

# ---- the Formatting line and the image made ----
# same_create CASE FMT SIZE [ARGS...]: both tools create FMT with ARGS; the
# Formatting lines are equal once the file names are, and qemu-img info
# reads the same format and virtual size from both images.
n=0
same_create() {
    local name=$1 fmt=$2 size=$3 ours theirs
    shift 3
    n=$((n + 1))
    local mine="ours$n.$fmt" qemu="qemu$n.$fmt"
    ours=$("$IMGCTL" create -f "$fmt" "$@" "$mine" "$size" 2>&1)
    local rc_ours=$?
    theirs=$(qemu-img create -f "$fmt" "$@" "$qemu" "$size" 2>&1)
    local rc_qemu=$?
    theirs=${theirs//"$qemu"/"$mine"}
    if [ "$rc_ours" != 0 ] || [ "$rc_qemu" != 0 ]; then
        fail "$name" "exit $rc_ours '$ours', qemu-img exit $rc_qemu '$theirs'"
        return
    fi
    check "$name" "'$ours' vs qemu-img's '$theirs'" -- test "$ours" = "$theirs"
    local facts_ours facts_qemu
    facts_ours=$(info_facts "$mine")
    facts_qemu=$(info_facts "$qemu")
    check "$name-info" "'$facts_ours' vs qemu-img's '$facts_qemu'" -- \
        test -n "$facts_ours" -a "$facts_ours" = "$facts_qemu"
}

for fmt in raw qcow2 vmdk vdi vpc; do
    same_create "default-$fmt" "$fmt" 5M
done
same_create raw-host-options raw 5M -o preallocation=full,nocow=on,extent_size_hint=1M
same_create qcow2-v2-4k qcow2 5M -o cluster_size=4k,compat=0.10
same_create qcow2-v3-options qcow2 5M \
    -o compat=1.1,lazy_refcounts=on,refcount_bits=0x8,extended_l2=on
same_create qcow2-prealloc qcow2 5M -o preallocation=metadata,nocow=on,extent_size_hint=1M
same_create qcow2-zstd qcow2 5M -o compression_type=zstd,cluster_size=128k
same_create vmdk-stream vmdk 5M -o subformat=streamOptimized
same_create vmdk-flat vmdk 5M -o subformat=monolithicFlat,adapter_type=lsilogic
same_create vmdk-versions vmdk 5M -o hwversion=4,toolsversion=5,zeroed_grain=on
same_create vmdk-compat6 vmdk 5M -o compat6=on,subformat=twoGbMaxExtentSparse
same_create vdi-static vdi 5M -o static=on
same_create vdi-host-options vdi 5M -o static=off,preallocation=full,nocow=on
same_create vpc-fixed vpc 5M -o subformat=fixed
same_create vpc-force-size vpc 5M -o subformat=dynamic,force_size=on
same_create vpc-chs vpc 100M

# Backing files print in the driver's place for them; a comma in a string
# value comes out doubled, as an option list reads it back.
qemu-img create -q -f qcow2 base.qcow2 3M && qemu-img create -q -f vmdk base.vmdk 3M ||
    fail backing-setup "qemu-img could not make the bases"
same_create qcow2-backing qcow2 3M -b base.qcow2 -F qcow2
same_create vmdk-backing vmdk 3M -b base.vmdk -F vmdk
cp base.qcow2 'a,b.qcow2'
same_create qcow2-comma qcow2 3M -o 'backing_file=a,,b.qcow2,backing_fmt=qcow2'

# An option of another format is refused before any file is made.
"$IMGCTL" create -f vdi -o subformat=fixed bad.vdi 1M >/dev/null 2>err.txt
check bad-option-vdi "$(cat err.txt)" -- \
    sh -c "grep -q \"Invalid parameter 'subformat'\" err.txt && test ! -e bad.vdi"
finish
