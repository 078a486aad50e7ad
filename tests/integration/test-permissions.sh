#!/usr/bin/env bash
# Who may read what: a view carries its image file's owner, group and mode
# (write bits taken away), the kernel enforces them (default_permissions),
# and nobody but the mounting user reaches the mount unless allow_other was
# asked for.  Other users are played by setpriv.
# "A && B || fail ..." below means: fail when A or B fails.
# shellcheck disable=SC2015
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

need setup qemu-img qemu-io setpriv python3 || finish
need_build setup || finish
if [ "$(id -u)" -ne 0 ]; then
    fail setup "needs root to give the images other owners and to play other users"
    finish
fi

OTHER=65534   # nobody
# the temporary folder must be walkable by the other user
chmod 755 "$T"
mkdir -p src
qemu-img create -q -f qcow2 src/private.qcow2 4M && qio src/private.qcow2 qcow2 "write -P 0x70 0 4k" &&
    qemu-img create -q -f qcow2 src/shared.qcow2 4M && qio src/shared.qcow2 qcow2 "write -P 0x73 0 4k" &&
    truncate -s 1M src/theirs.img ||
    fail build "qemu could not make the images"
chown 1234:5678 src/private.qcow2 && chmod 0640 src/private.qcow2
chmod 0644 src/shared.qcow2
chown "$OTHER:$OTHER" src/theirs.img && chmod 0600 src/theirs.img

as_other() { setpriv --reuid="$OTHER" --regid="$OTHER" --clear-groups "$@"; }

# owner_mode_is VIEW SOURCE: uid, gid and mode follow the source, minus writes
owner_mode_is() {
    local want got
    want=$(stat -c '%u %g' "$2")
    want="$want $(printf '%o' $((0$(stat -c %a "$2") & ~0222)))"
    got=$(stat -c '%u %g %a' "$1")
    [ "$got" = "$want" ] && pass "$3" || fail "$3" "$1 is '$got' (uid gid mode), want '$want' from $2"
}

# -- without allow_other: only the mounting user
if mount_imgfs src mnt; then
    owner_mode_is mnt/private.raw src/private.qcow2 attrs/private
    owner_mode_is mnt/shared.raw src/shared.qcow2 attrs/shared
    owner_mode_is mnt/theirs.raw src/theirs.img attrs/theirs
    if as_other stat mnt/shared.raw >/dev/null 2>&1; then
        fail no-allow-other "user $OTHER reaches the mount though allow_other was not asked for"
    else
        pass no-allow-other
    fi
    umount_imgfs mnt
else
    fail mount "$IMGFS_ERR"
fi

# -- with allow_other: the modes decide
if mount_imgfs src mnt2 -o allow_other; then
    grep -q 'allow_other' "$IMGFS_LOG" && pass allow-other/said ||
        fail allow-other/said "imgfs did not say that every user may read the images"
    as_other cat mnt2/shared.raw >/dev/null 2>&1 && pass allow-other/shared-readable ||
        fail allow-other/shared-readable "user $OTHER cannot read a 0644 image's view"
    if as_other cat mnt2/private.raw >/dev/null 2>&1; then
        fail allow-other/private-refused "user $OTHER read the view of a 0640 image of 1234:5678"
    else
        pass allow-other/private-refused
    fi
    as_other cat mnt2/theirs.raw >/dev/null 2>&1 && pass allow-other/own-file ||
        fail allow-other/own-file "user $OTHER cannot read the view of its own 0600 image"
    if cat mnt2/private.raw >/dev/null 2>&1; then
        pass allow-other/root-reads
    else
        fail allow-other/root-reads "root cannot read the view"
    fi
else
    fail mount-allow-other "$IMGFS_ERR"
fi
finish
