#!/usr/bin/env bash
# Real images made by other tools (../shared/testdata/real, see its README):
# every qcow2/raw image that qemu reads (manifest qemu_status ok) is
# decompressed into the test folder (keeping the layout, so backing and data
# files resolve), the folder is mounted, and each view must read as the
# manifest's sha256_raw and map as its map_json.  The qcow2 images qemu
# refuses (missing backing files, an absurd L1 table) must fail cleanly with
# the reason logged.  What is expected of each row, and why, is written in
# real-plan.py.
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup python3 xz bzip2 jq || finish
need_build setup || finish

SHARED_DIR=${SHARED_DIR:-$(git -C "$REPO_ROOT" rev-parse --show-toplevel 2>/dev/null || echo "$REPO_ROOT")/../shared}
REAL=$SHARED_DIR/testdata/real
if [ ! -r "$REAL/manifest.tsv" ]; then
    fail setup "no manifest at $REAL/manifest.tsv (set SHARED_DIR)"
    finish
fi
if ! python3 "$LIB_DIR/real-plan.py" "$REAL" >plan.tsv 2>"$T/err.txt" || [ ! -s plan.tsv ]; then
    fail plan "real-plan.py failed: $(head -c 300 "$T/err.txt")"
    finish
fi

mkdir -p src
t0=$(date +%s)
while IFS=$'\t' read -r kind stored img sha; do
    [ "$kind" = fetch ] || continue
    mkdir -p "src/$(dirname "$stored")"
    cp "$REAL/$stored" "src/$stored" && chmod u+w "src/$stored" || {
        fail "fetch:$img" "cannot copy $REAL/$stored"
        continue
    }
    # xz -d writes holes where the data is zero (as when the oracle ran)
    case $stored in
        *.xz) xz -d "src/$stored" ;;
        *.bz2) bzip2 -d "src/$stored" ;;
    esac || fail "fetch:$img" "cannot decompress $stored"
    if [ "$sha" != - ] && [ "$(python3 "$SHA256" "src/$img")" != "$sha" ]; then
        fail "fetch:$img" "decompressed image does not have the manifest's sha256_image"
    fi
done <plan.tsv
say "    fetched and decompressed in $(($(date +%s) - t0)) s"

if ! mount_imgfs src mnt; then
    fail mount "$IMGFS_ERR"
    finish
fi
pass mount

n=0
while IFS=$'\t' read -r kind img view sha size mapj cluster; do
    n=$((n + 1))
    case $kind in
        check)
            if ref_from "$img" "$sha" "$size" "$mapj"; then
                check_view "$img" "mnt/$view" "$cluster" "sha map stat"
            else
                fail "$img/ref" "cannot read $mapj"
            fi
            ;;
        maybe)
            if [ -e "mnt/$view" ]; then
                got=$(tmo python3 "$SHA256" "mnt/$view")
                gsize=$(stat -c %s "mnt/$view")
                if [ "$got" = "$sha" ] && [ "$gsize" = "$size" ]; then
                    pass "$img/shown-and-right"
                else
                    fail "$img/shown-and-right" "mnt/$view is shown but reads as $got ($gsize bytes), want $sha ($size bytes)"
                fi
            else
                pass "$img/not-shown"
            fi
            ;;
        refuse)
            out=$(tmo python3 "$LIB_DIR/tryread.py" "mnt/$view" 2>&1)
            rc=$?
            case $rc:$out in
                0:absent | 0:listed-absent | 0:error\ *) pass "$img/refused" ;;
                124:* | 137:*) fail "$img/refused" "mnt/$view hangs (no answer in ${OP_TIMEOUT}s)" ;;
                *) fail "$img/refused" "mnt/$view: $out (qemu refuses this image)" ;;
            esac
            say "    $img: $out"
            reason=$sha   # 4th column of a refuse line
            if grep -F "$(basename "$img")" "$IMGFS_LOG" | grep -q -i -E "$reason"; then
                pass "$img/logged"
                say "    log: $(grep -F "$(basename "$img")" "$IMGFS_LOG" | head -n 1)"
            else
                fail "$img/logged" "no line of the imgfs log names $(basename "$img") with the reason (/$reason/)"
            fi
            ;;
        hidden)
            if [ -e "mnt/$view" ]; then
                fail "$img/hidden" "the companion is shown as mnt/$view"
            else
                pass "$img/hidden"
            fi
            ;;
    esac
done <plan.tsv

if alive "$IMGFS_PID"; then pass daemon-alive; else fail daemon-alive "imgfs died"; fi
finish
