#!/usr/bin/env python3
"""Judge the hostile-image suite made by gen.py (see common.py for what each
expectation asks).  Prints one line per verdict, "PASS CASE/STEP" or
"FAIL CASE/STEP: WHY", for the shell test to record.

judge.py imgctl OUT IMGCTL
    imgctl info, map, check and convert on every case: no hang (a 5 s guard),
    no crash, no sanitizer report, every failure one stderr line naming the
    file; a broken image refused by at least one of info/check/convert; what
    converts equals qemu-img's reading when qemu reads it too.  Leaves
    OUT/imgctl.tsv (CASE, convert status, sha256 of the converted bytes).

judge.py mount OUT MNT PID LOG
    every case through the mount: a view reads exactly what imgctl converted,
    or is refused (absent or an error) where imgctl convert failed; the daemon
    stays up; each refused image is named in the log; no log line repeats.

judge.py mount-allow-outside OUT MNT PID LOG
    the "outside" cases through a mount made with -o allow_outside: each view
    reads what imgctl --allow-outside converted.
"""
import errno
import hashlib
import os
import subprocess
import sys
import time

GUARD = 5   # seconds: a hang guard, not a speed test (make bench measures)
SANITIZER = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
             "runtime error:")


def manifest(out):
    with open(os.path.join(out, "manifest.tsv")) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def verdict(ok, name, why=""):
    print(f"PASS {name}" if ok else f"FAIL {name}: {why}", flush=True)
    return ok


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


class Run:
    """One command, bounded by the guard."""

    def __init__(self, args, cwd):
        t0 = time.monotonic()
        try:
            p = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                               errors="replace", timeout=GUARD)
            self.rc, self.out, self.err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            self.rc, self.out, self.err = None, "", ""
        self.secs = time.monotonic() - t0


def judge_run(case, step, r, path, ok_codes=(0,)):
    """The rules every imgctl run keeps, whatever the image."""
    name = f"{case}/{step}"
    if r.rc is None:
        return verdict(False, name, f"no answer within {GUARD}s (hang)")
    if r.rc < 0 or (r.rc > 3 and r.rc not in ok_codes):
        return verdict(False, name, f"exit status {r.rc} (crash?): {r.err.strip()[:300]}")
    for s in SANITIZER:
        if s in r.err or s in r.out:
            return verdict(False, name, f"sanitizer report: {r.err.strip()[:400]}")
    if r.rc in ok_codes:
        return True
    if step == "check" and r.rc == 1 and "internal errors have occurred" in r.out:
        return True   # a finished report: its findings are on stderr, as qemu-img's
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    if len(lines) != 1:
        return verdict(False, name, f"exit {r.rc} with {len(lines)} stderr lines, not one: "
                                    f"{r.err.strip()[:300]!r}")
    if os.path.basename(path) not in lines[0]:
        return verdict(False, name, f"the message does not name the file: {lines[0]!r}")
    return True


def qemu_convert(path, fmt, dst, cwd):
    r = Run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, dst], cwd)
    return r.rc == 0


def do_imgctl(out, imgctl):
    src = os.path.join(out, "src")
    scratch = os.path.join(out, "scratch")
    os.makedirs(scratch, exist_ok=True)
    ours, theirs = os.path.join(scratch, "ours.raw"), os.path.join(scratch, "qemu.raw")
    slowest = (0.0, "")
    results = []
    for case, fmt, expect, fault in manifest(out):
        path = os.path.join(src, case)
        cwd = os.path.dirname(path)
        allowed_sha = "-"   # the bytes read with --allow-outside
        for f in (ours, theirs):
            if os.path.exists(f):
                os.unlink(f)
        runs = {
            "info": Run([imgctl, "info", path], cwd),
            "map": Run([imgctl, "map", "--output=json", path], cwd),
            "check": Run([imgctl, "check", path], cwd),
            "convert": Run([imgctl, "convert", "-O", "raw", path, ours], cwd),
        }
        fine = True
        for step, r in runs.items():
            # check: 2 corrupt, 3 leaks, 63 the format has no check
            codes = (0, 2, 3, 63) if step == "check" else (0,)
            fine &= judge_run(case, step, r, path, codes)
            if r.secs > slowest[0]:
                slowest = (r.secs, f"{case} {step}")
        failed = [s for s in ("info", "check", "convert") if runs[s].rc not in (0, 63)]
        if expect == "bad":
            fine &= verdict(bool(failed), f"{case}/refused",
                            f"{fault}: info, check and convert all succeed")
        elif expect == "outside":
            # convert opens the whole chain (info, as qemu-img's, only the top)
            msg = runs["convert"].err
            fine &= verdict(runs["convert"].rc not in (0, None) and "outside" in msg,
                            f"{case}/confined", f"{fault}: not refused as outside: {msg!r}")
            allowed = Run([imgctl, "convert", "--allow-outside", "-O", "raw", path, ours], cwd)
            fine &= judge_run(case, "allowed", allowed, path)
            if allowed.rc == 0:
                allowed_sha = sha_file(ours)
                if qemu_convert(path, fmt, theirs, cwd):
                    fine &= verdict(allowed_sha == sha_file(theirs), f"{case}/allowed-bytes",
                                    "--allow-outside reads other bytes than qemu-img")
            os.unlink(ours) if os.path.exists(ours) else None
        elif expect == "good":
            fine &= verdict(not failed, f"{case}/accepted",
                            f"{fault}: {' '.join(failed)} failed: "
                            f"{(runs[failed[0]].err if failed else '').strip()[:300]}")
        conv = runs["convert"]
        sha = sha_file(ours) if conv.rc == 0 and os.path.exists(ours) else "-"
        if conv.rc == 0 and qemu_convert(path, fmt, theirs, cwd):
            fine &= verdict(sha == sha_file(theirs), f"{case}/bytes",
                            f"{fault}: imgctl reads other bytes than qemu-img")
        results.append((case, "ok" if conv.rc == 0 else "refused", sha, allowed_sha))
        if fine:
            verdict(True, f"{case}/imgctl")
    with open(os.path.join(out, "imgctl.tsv"), "w") as f:
        for r in results:
            f.write("\t".join(r) + "\n")
    print(f"note: slowest imgctl run {slowest[0]:.2f}s ({slowest[1]})")


# ---- mount --------------------------------------------------------------

def view_of(mnt, case):
    d, name = os.path.split(case)
    if not name.endswith(".raw"):
        name = name.rsplit(".", 1)[0] + ".raw"
    return os.path.join(mnt, d, name)


def read_view(path):
    """('absent'|'error'|'ok', sha or why)"""
    d, name = os.path.split(path)
    try:
        if name not in os.listdir(d):
            return "absent", ""
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        return "ok", h.hexdigest()
    except OSError as e:
        if e.errno == errno.ENOENT:
            return "absent", ""
        return "error", f"{errno.errorcode.get(e.errno, e.errno)}"


def expect_of(out, case):
    return next(c[2] for c in manifest(out) if c[0] == case)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def do_mount(out, mnt, pid, log, allow_outside=False):
    ours = {}
    with open(os.path.join(out, "imgctl.tsv")) as f:
        for line in f:
            case, status, sha, allowed_sha = line.rstrip("\n").split("\t")
            if allow_outside and expect_of(out, case) == "outside":
                status, sha = ("ok" if allowed_sha != "-" else "refused"), allowed_sha
            ours[case] = (status, sha)
    refused, n_read = [], 0
    for case, fmt, expect, fault in manifest(out):
        if allow_outside and expect != "outside":
            continue
        n_read += 1
        view = view_of(mnt, case)
        t0 = time.monotonic()
        state, what = read_view(view)
        secs = time.monotonic() - t0
        status, sha = ours.get(case, ("missing", "-"))
        name = f"{case}/view"
        if status == "ok":
            ok = verdict(state == "ok" and what == sha, name,
                         f"imgctl converts it, the view says {state} {what}")
        else:
            ok = verdict(state in ("absent", "error"), name,
                         f"imgctl refuses it ({fault}), the view reads it: {state}")
            refused.append(case)
        if secs > GUARD:
            verdict(False, f"{case}/view-time", f"{secs:.1f}s to look the view up and read it")
        if not alive(pid):
            verdict(False, f"{case}/daemon-alive", "imgfs died")
            return
        if ok:
            pass
    verdict(True, "daemon-alive")
    with open(log, errors="replace") as f:
        lines = [ln.rstrip("\n") for ln in f]
    for s in SANITIZER:
        if any(s in ln for ln in lines):
            verdict(False, "log-sanitizer", "\n".join(ln for ln in lines if s in ln)[:500])
    seen, repeated = set(), set()
    for ln in lines:
        (repeated if ln in seen else seen).add(ln)
    verdict(not repeated, "log-once", f"lines logged more than once: {sorted(repeated)[:3]}")
    for case in refused:
        base = os.path.basename(case)
        verdict(any(base in ln for ln in lines), f"{case}/logged",
                "no line of the log names it")
    with open(f"/proc/{pid}/status") as f:
        hwm = [ln for ln in f if ln.startswith("VmHWM:")]
    kb = int(hwm[0].split()[1]) if hwm else 0
    print(f"note: imgfs peak resident memory {kb // 1024} MiB after {n_read} images")
    limit = int(os.environ.get("HOSTILE_MEM_LIMIT_MB", "512"))
    verdict(kb < limit * 1024, "memory-bounded",
            f"peak resident memory {kb // 1024} MiB, over the {limit} MiB allowed")


def main():
    if len(sys.argv) >= 3:
        sys.argv[2] = os.path.abspath(sys.argv[2])   # commands run in the images' folders
    if len(sys.argv) >= 4 and sys.argv[1] == "imgctl":
        do_imgctl(sys.argv[2], os.path.abspath(sys.argv[3]))
    elif len(sys.argv) >= 6 and sys.argv[1] in ("mount", "mount-allow-outside"):
        do_mount(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5],
                 sys.argv[1] == "mount-allow-outside")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
