#!/usr/bin/env bash
# Run every tests/integration/test-*.sh, each in its own `mktemp -d` folder,
# and end with one line "N passed, N failed" (cases, not scripts).
#
# usage: tests/integration/run-all.sh [BUILD_DIR] [PATTERN]
#   BUILD_DIR  build (default) or build-asan; relative to the repo root
#   PATTERN    only the tests whose name contains it (e.g. "hostile")
# A test script that exits non-zero without recording a failure, records no
# case at all, or passes its time limit counts as one more failure.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build}
case $build in
    /*) ;;
    *) build=$root/$build ;;
esac
pattern=${2:-}
# Per-script limit; the whole suite is meant to take a few minutes.
script_timeout=${IMGFS_TEST_TIMEOUT:-400}

if [ "$(id -u)" -ne 0 ]; then
    echo "note: not root; FUSE mounts may work, loop mounts will not"
fi

total_pass=0
total_fail=0
start=$(date +%s)
all_results=$(mktemp)

for t in "$here"/test-*.sh; do
    name=$(basename "$t" .sh)
    name=${name#test-}
    case $name in
        *"$pattern"*) ;;
        *) continue ;;
    esac
    dir=$(mktemp -d)
    results=$dir.results
    : >"$results"
    echo "=== $name"
    t0=$(date +%s)
    BUILD=$build T=$dir RESULTS=$results timeout -k 20 "$script_timeout" bash "$t" "$build" </dev/null
    rc=$?
    t1=$(date +%s)
    np=$(grep -c '^PASS ' "$results")
    nf=$(grep -c '^FAIL ' "$results")
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "FAIL $name: the script passed its time limit of ${script_timeout}s"
        echo "FAIL $name: time limit" >>"$results"
        nf=$((nf + 1))
    elif [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
        echo "FAIL $name: the script exited with status $rc without naming a failure"
        echo "FAIL $name: exit status $rc" >>"$results"
        nf=$((nf + 1))
    elif [ $((np + nf)) -eq 0 ]; then
        echo "FAIL $name: the script recorded no case"
        echo "FAIL $name: no case recorded" >>"$results"
        nf=$((nf + 1))
    fi
    echo "=== $name: $np ok, $nf not ok, $((t1 - t0)) s"
    cat "$results" >>"$all_results"
    total_pass=$((total_pass + np))
    total_fail=$((total_fail + nf))
    # The test removes its own folder; if it could not (killed), do it here,
    # but never through a mount that is still inside it.
    if [ -d "$dir" ]; then
        while read -r m; do
            umount -l "$m" 2>/dev/null
        done < <(awk -v t="$dir/" 'index($5 "/", t) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
        rm -rf --one-file-system "$dir"
    fi
    rm -f "$results"
done

end=$(date +%s)
if [ "$total_fail" -gt 0 ]; then
    echo
    echo "Failures:"
    grep '^FAIL ' "$all_results" | sed 's/^/  /'
fi
rm -f "$all_results"
echo "integration suite took $((end - start)) s"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ] && [ "$total_pass" -gt 0 ]
