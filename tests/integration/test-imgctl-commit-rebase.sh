#!/usr/bin/env bash
# imgctl commit and rebase over a 3-level chain (base <- mid <- top, different
# data in each, zero clusters shadowing data below), with qemu-img as the
# judge: every image passes `qemu-img check`, and `qemu-img compare` shows
# that what should read the same still does.  Commit is also run side by side
# with `qemu-img commit` on a twin chain: every layer reads the same as the
# twin's, and the committed image holds the same ranges afterwards (emptied
# without -d, as qemu-img empties it; untouched with -d or -b).  Bad input:
# no backing file, a base outside the chain, a missing new backing file, a
# base held by another process.
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io python3 jq || finish
IMGCTL=$BUILD/imgctl
if [ ! -x "$IMGCTL" ]; then
    fail setup "$IMGCTL is missing (run make)"
    finish
fi
M=$((1 << 20))

# check_qcow2 CASE IMG...: no corruption, no leak.
check_qcow2() {
    local name=$1 img js
    shift
    for img in "$@"; do
        js=$(qemu-img check -U --output=json "$img" 2>&1)
        if [ "$(jq -r '(.corruptions // 0) + (.leaks // 0) + (."check-errors" // 0)' <<<"$js" 2>/dev/null)" != 0 ]; then
            fail "$name" "qemu-img check $img: $(head -c 300 <<<"$js" | tr '\n' ' ')"
            return 1
        fi
    done
}

same() {
    local name=$1 a=$2 b=$3
    if qemu-img compare -U "$a" "$b" >"$T/cmp.txt" 2>&1; then
        return 0
    fi
    fail "$name" "$a vs $b: $(head -c 200 "$T/cmp.txt" | tr '\n' ' ')"
    return 1
}

# make_chain DIR BASEFMT [OPTS]: DIR/base.BASEFMT <- DIR/mid.qcow2 <-
# DIR/top.qcow2 (mid and top created with -o OPTS), and
# DIR/{top,mid,base}.want.raw: what each reads now.
make_chain() {
    local d=$1 f=$2 o=()
    [ -n "${3:-}" ] && o=(-o "$3")
    mkdir -p "$d"
    qemu-img create -q -f "$f" "$d/base.$f" 32M &&
        qio "$d/base.$f" "$f" "write -P 0x11 0 $((8 * M))" "write -P 0x12 $((30 * M)) $M" &&
        qemu-img create -q -f qcow2 "${o[@]}" -b "base.$f" -F "$f" "$d/mid.qcow2" &&
        qio "$d/mid.qcow2" qcow2 "write -P 0x21 $M $((2 * M))" "write -z $((4 * M)) $M" \
            "write -P 0x22 $((20 * M + 512)) 70000" &&
        qemu-img create -q -f qcow2 "${o[@]}" -b mid.qcow2 -F qcow2 "$d/top.qcow2" &&
        qio "$d/top.qcow2" qcow2 "write -P 0x31 $((M + 4096)) 8192" "write -z $((6 * M)) $((64 * 1024))" \
            "write -P 0x32 $((25 * M)) $M" "write -P 0x33 $((32 * M - 4096)) 4096" || return 1
    for l in top.qcow2 mid.qcow2 "base.$f"; do
        qemu-img convert -U -O raw "$d/$l" "$d/${l%.*}.want.raw" || return 1
    done
}

# ---- commit -----------------------------------------------------------------

# Into a raw base through two layers (-b names it; -b implies -d).
if make_chain c1 raw; then
    if tmo "$IMGCTL" commit -b c1/base.raw c1/top.qcow2 >"$T/out.txt" 2>"$T/err.txt" &&
        grep -q "Image committed." "$T/out.txt"; then
        same commit/b-raw-base c1/top.want.raw c1/base.raw &&
            same commit/b-raw-base c1/top.want.raw c1/top.qcow2 &&
            check_qcow2 commit/b-raw-base c1/top.qcow2 c1/mid.qcow2 && pass commit/b-raw-base
    else
        fail commit/b-raw-base "$(head -c 300 "$T/err.txt")"
    fi
else
    fail commit/b-raw-base "could not build the chain"
fi

# Bad input.
expect_fail() {
    local name=$1 pat=$2 rc
    shift 2
    tmo "$@" >"$T/out.txt" 2>"$T/err.txt"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        fail "$name" "succeeded"
    elif [ "$rc" -ge 124 ]; then
        fail "$name" "exit status $rc (crash or hang): $(head -c 300 "$T/err.txt")"
    elif ! grep -q -- "$pat" "$T/err.txt"; then
        fail "$name" "message lacks '$pat': $(head -c 300 "$T/err.txt" | tr '\n' ' ')"
    else
        pass "$name"
    fi
}
qemu-img create -q -f qcow2 lone.qcow2 1M
expect_fail commit/no-backing "backing file" "$IMGCTL" commit lone.qcow2
make_chain c2 raw || fail setup "chain c2"
expect_fail commit/base-not-in-chain "lone.qcow2" "$IMGCTL" commit -b lone.qcow2 c2/top.qcow2
expect_fail commit/base-missing "nothere" "$IMGCTL" commit -b nothere.raw c2/top.qcow2
# a base that another process holds is not written
(cd c2 && qemu-io -f raw base.raw -c "sleep 5000" >/dev/null 2>&1) &
held=$!
BG_PIDS+=("$held")
sleep 1
expect_fail commit/base-in-use "in use" "$IMGCTL" commit -b c2/base.raw c2/top.qcow2
same commit/base-in-use-untouched c2/base.want.raw c2/base.raw && pass commit/base-in-use-untouched
kill "$held" 2>/dev/null
wait "$held" 2>/dev/null

have_qcow2_writer=false
qemu-img create -q -f raw tiny.raw 1M
"$IMGCTL" convert -O qcow2 tiny.raw probe.qcow2 >/dev/null 2>&1 && have_qcow2_writer=true
if ! $have_qcow2_writer; then
    say "note: the qcow2 writer is not there yet; commit into qcow2 and rebase not tested"
    finish
fi

# own_ranges IMG: what IMG itself holds (data or zeros), not its backing
# chain: the depth-0 ranges of qemu-img map, as one line of JSON.
own_ranges() {
    qemu-img map -U --output=json "$1" | jq -c '[.[] | select(.depth == 0 and .present) | [.start, .length, .zero]]'
}

# holds_nothing CASE IMG: qemu-img map finds nothing allocated in IMG itself.
holds_nothing() {
    local got
    got=$(own_ranges "$2")
    [ "$got" = "[]" ] && return 0
    fail "$1" "$2 still holds $(head -c 200 <<<"$got")"
    return 1
}

# same_ranges CASE DIR TWIN IMG: DIR/IMG holds the same ranges as TWIN/IMG.
same_ranges() {
    local a b
    a=$(own_ranges "$2/$4")
    b=$(own_ranges "$3/$4")
    [ "$a" = "$b" ] && return 0
    fail "$1" "$4 holds $(head -c 200 <<<"$a"), qemu-img's twin $(head -c 200 <<<"$b")"
    return 1
}

# like_qemu CASE DIR TWIN IMG LAYERS...: after our commit of IMG in DIR and
# qemu-img's in TWIN, every layer reads the same as its twin, and IMG holds
# the same ranges as the twin's IMG.  (The base's ranges may differ: with
# subclusters we copy what the top holds, qemu's job whole clusters.)
like_qemu() {
    local name=$1 d=$2 tw=$3 img=$4 l
    shift 4
    for l in "$@"; do
        same "$name" "$d/$l" "$tw/$l" || return 1
    done
    same_ranges "$name" "$d" "$tw" "$img"
}

# Default base (mid): mid then reads as top did, top is emptied (as
# qemu-img empties it) and reads the same through mid; base is untouched.
if make_chain c3 qcow2 && make_chain c3q qcow2 && qemu-img commit -q c3q/top.qcow2; then
    if tmo "$IMGCTL" commit c3/top.qcow2 >"$T/out.txt" 2>"$T/err.txt"; then
        same commit/into-mid c3/top.want.raw c3/mid.qcow2 && same commit/into-mid c3/top.want.raw c3/top.qcow2 &&
            same commit/into-mid c3/base.want.raw c3/base.qcow2 &&
            check_qcow2 commit/into-mid c3/top.qcow2 c3/mid.qcow2 c3/base.qcow2 && pass commit/into-mid
        holds_nothing commit/empties-top c3/top.qcow2 && pass commit/empties-top
        like_qemu commit/into-mid-like-qemu c3 c3q top.qcow2 top.qcow2 mid.qcow2 base.qcow2 &&
            same_ranges commit/into-mid-like-qemu c3 c3q mid.qcow2 && pass commit/into-mid-like-qemu
    else
        fail commit/into-mid "$(head -c 300 "$T/err.txt")"
    fi
else
    fail commit/into-mid "could not build the chains"
fi
# -d: the top keeps what it holds, as with qemu-img commit -d.
if make_chain c5 qcow2 && make_chain c5q qcow2 && qemu-img commit -q -d c5q/top.qcow2; then
    before=$(own_ranges c5/top.qcow2)
    if tmo "$IMGCTL" commit -d c5/top.qcow2 >"$T/out.txt" 2>"$T/err.txt"; then
        if [ "$(own_ranges c5/top.qcow2)" != "$before" ] || [ "$before" = "[]" ]; then
            fail commit/d-keeps-top "the top's ranges changed: $(own_ranges c5/top.qcow2 | head -c 200)"
        else
            same commit/d-keeps-top c5/top.want.raw c5/mid.qcow2 && check_qcow2 commit/d-keeps-top c5/top.qcow2 c5/mid.qcow2 &&
                like_qemu commit/d-keeps-top c5 c5q top.qcow2 top.qcow2 mid.qcow2 base.qcow2 && pass commit/d-keeps-top
        fi
    else
        fail commit/d-keeps-top "$(head -c 300 "$T/err.txt")"
    fi
fi
# mid into a raw base, with top still above it: mid is emptied and the whole
# chain reads as before.
if make_chain c6 raw && make_chain c6q raw && qemu-img commit -q c6q/mid.qcow2; then
    if tmo "$IMGCTL" commit c6/mid.qcow2 >"$T/out.txt" 2>"$T/err.txt"; then
        same commit/mid-into-raw c6/mid.want.raw c6/base.raw && same commit/mid-into-raw c6/top.want.raw c6/top.qcow2 &&
            same commit/mid-into-raw c6/mid.want.raw c6/mid.qcow2 && check_qcow2 commit/mid-into-raw c6/top.qcow2 c6/mid.qcow2 &&
            holds_nothing commit/mid-into-raw c6/mid.qcow2 &&
            like_qemu commit/mid-into-raw c6 c6q mid.qcow2 top.qcow2 mid.qcow2 base.raw && pass commit/mid-into-raw
    else
        fail commit/mid-into-raw "$(head -c 300 "$T/err.txt")"
    fi
fi
# Other layouts of the emptied image: version 2 (no zero flag), subclusters.
for opts in compat=0.10 extended_l2=on; do
    d=c7-${opts%%=*}
    if make_chain "$d" qcow2 "$opts" && make_chain "$d"q qcow2 "$opts" && qemu-img commit -q "$d"q/top.qcow2; then
        if tmo "$IMGCTL" commit "$d/top.qcow2" >"$T/out.txt" 2>"$T/err.txt"; then
            same "commit/empties-$opts" "$d/top.want.raw" "$d/top.qcow2" && same "commit/empties-$opts" "$d/top.want.raw" "$d/mid.qcow2" &&
                check_qcow2 "commit/empties-$opts" "$d/top.qcow2" "$d/mid.qcow2" &&
                holds_nothing "commit/empties-$opts" "$d/top.qcow2" &&
                like_qemu "commit/empties-$opts" "$d" "$d"q top.qcow2 top.qcow2 mid.qcow2 base.qcow2 &&
                pass "commit/empties-$opts"
        else
            fail "commit/empties-$opts" "$(head -c 300 "$T/err.txt")"
        fi
    else
        fail "commit/empties-$opts" "could not build the chains"
    fi
done
# -b base through two qcow2 layers (-b implies -d: the top keeps its data)
if make_chain c4 qcow2 && make_chain c4q qcow2 && qemu-img commit -q -b base.qcow2 c4q/top.qcow2; then
    if tmo "$IMGCTL" commit -b c4/base.qcow2 c4/top.qcow2 >"$T/out.txt" 2>"$T/err.txt"; then
        same commit/b-qcow2-base c4/top.want.raw c4/base.qcow2 && same commit/b-qcow2-base c4/top.want.raw c4/top.qcow2 &&
            check_qcow2 commit/b-qcow2-base c4/top.qcow2 c4/mid.qcow2 c4/base.qcow2 &&
            like_qemu commit/b-qcow2-base c4 c4q top.qcow2 top.qcow2 base.qcow2 && pass commit/b-qcow2-base
    else
        fail commit/b-qcow2-base "$(head -c 300 "$T/err.txt")"
    fi
fi

# A top whose driver cannot discard (vmdk) keeps its data, with a note, as
# qemu-img keeps it silently (its vmdk driver has no make_empty either).  No
# twin here: qemu-img's vmdk commit gives the base a new CID, after which
# qemu refuses to read the top through it.
mkdir -p c8
if qemu-img create -q -f vmdk c8/base.vmdk 8M && qio c8/base.vmdk vmdk "write -P 0x41 0 $((4 * M))" &&
    qemu-img create -q -f vmdk -b base.vmdk -F vmdk c8/top.vmdk && qio c8/top.vmdk vmdk "write -P 0x42 $M $M" &&
    qemu-img convert -U -O raw c8/top.vmdk c8/top.want.raw; then
    before=$(own_ranges c8/top.vmdk)
    if ! tmo "$IMGCTL" commit c8/top.vmdk >"$T/out.txt" 2>"$T/err.txt"; then
        fail commit/vmdk-top-kept "$(head -c 300 "$T/err.txt")"
    elif ! grep -q "keeps its clusters" "$T/err.txt"; then
        fail commit/vmdk-top-kept "no note: $(head -c 300 "$T/err.txt")"
    elif [ "$(own_ranges c8/top.vmdk)" != "$before" ]; then
        fail commit/vmdk-top-kept "the top's ranges changed: $(own_ranges c8/top.vmdk | head -c 200)"
    else
        same commit/vmdk-top-kept c8/top.want.raw c8/base.vmdk && same commit/vmdk-top-kept c8/top.want.raw c8/top.vmdk &&
            pass commit/vmdk-top-kept
    fi
else
    fail commit/vmdk-top-kept "could not build the chain"
fi

# ---- rebase -----------------------------------------------------------------

backing_of() {
    qemu-img info -U --output=json "$1" | jq -r '."backing-filename" // ""'
}

# rebase_case CASE DIR EXPECTED_BACKING ARGS...
rebase_case() {
    local name=$1 d=$2 want=$3
    shift 3
    if ! tmo "$IMGCTL" rebase "$@" "$d/top.qcow2" >"$T/out.txt" 2>"$T/err.txt"; then
        fail "$name" "$(head -c 300 "$T/err.txt")"
        return
    fi
    local got
    got=$(backing_of "$d/top.qcow2")
    if [ "$got" != "$want" ]; then
        fail "$name" "backing file is '$got', want '$want'"
        return
    fi
    same "$name" "$d/top.want.raw" "$d/top.qcow2" && check_qcow2 "$name" "$d/top.qcow2" && pass "$name"
}

make_chain r1 qcow2 && rebase_case rebase/drop-mid r1 base.qcow2 -b base.qcow2 -F qcow2
make_chain r2 qcow2 && rebase_case rebase/flatten r2 "" -b ""
make_chain r3 qcow2 && qemu-img create -q -f qcow2 r3/other.qcow2 32M &&
    qio r3/other.qcow2 qcow2 "write -P 0x99 0 $((32 * M))" &&
    rebase_case rebase/onto-unrelated r3 other.qcow2 -b other.qcow2
make_chain r4 raw && rebase_case rebase/raw-base r4 base.raw -b base.raw -F raw
# -u rewrites the header only: the view changes to the new chain's.
if make_chain r5 qcow2; then
    if tmo "$IMGCTL" rebase -u -b base.qcow2 -F qcow2 r5/top.qcow2 2>"$T/err.txt" &&
        [ "$(backing_of r5/top.qcow2)" = base.qcow2 ] && check_qcow2 rebase/unsafe r5/top.qcow2; then
        qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 r5/ref.qcow2 &&
            pass rebase/unsafe
    else
        fail rebase/unsafe "$(head -c 300 "$T/err.txt")"
    fi
fi
make_chain r6 qcow2 && expect_fail rebase/missing-backing "nothere.qcow2" "$IMGCTL" rebase -b nothere.qcow2 r6/top.qcow2
same rebase/missing-backing-untouched r6/top.want.raw r6/top.qcow2 && [ "$(backing_of r6/top.qcow2)" = mid.qcow2 ] &&
    pass rebase/missing-backing-untouched

finish
