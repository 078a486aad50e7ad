#!/usr/bin/env python3
"""gen.py OUT [FAMILY...]: make the hostile-image suite in OUT.

OUT/src       broken images (and a few valid odd ones), the folder to mount
OUT/outside   files beside src that images try to reach
OUT/work      the valid templates they were made from
OUT/manifest.tsv   one line per case: NAME FORMAT EXPECT FAULT
                   (see common.py for what EXPECT asks of imgctl and imgfs)

Every case starts from an image qemu-img made, so the suite follows qemu's
layouts rather than our own idea of them.  FAMILY picks some of the
gen_FAMILY.py modules beside this file (default: all of them).
"""
import importlib
import os
import sys

from common import Ctx  # noqa: E402  (this folder is on sys.path: it holds gen.py)

HERE = os.path.dirname(os.path.abspath(__file__))
# every gen_FAMILY.py beside this file
FAMILIES = sorted(f[4:-3] for f in os.listdir(HERE) if f.startswith("gen_") and f.endswith(".py"))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ctx = Ctx(sys.argv[1])
    for fam in sys.argv[2:] or FAMILIES:
        if fam not in FAMILIES:
            sys.exit(f"gen.py: unknown family {fam}")
        importlib.import_module("gen_" + fam).generate(ctx)
    ctx.write_manifest()
    print(f"gen.py: {len(ctx.cases)} cases in {ctx.src}")


if __name__ == "__main__":
    main()
