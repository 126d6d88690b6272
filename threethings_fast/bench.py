"""`python -m threethings_fast.bench` (`make report`, the `threethings-bench` script): the profiler's `report` preset.

    python -m threethings_fast.bench                     # = python -m threethings_fast.profile --preset report
    python -m threethings_fast.bench --model S36x1 --batches 1 8 --reps 5 --json out.json

The short reference-vs-fused report: S18x2 at 224, batches 1 and 16 on CPU (1 and 64 on GPU); the reference, its
branches run one after another, and convert()'s default fused model (provider fused[auto]), timed interleaved.
It is the profiler's run and report (profile.md printed, profile.json and the plots written to
bench/results/report_<device> or --out); this module only keeps the options the report used to take:
    --model M        -> --models M
    --backend B      -> --providers reference branch_by_branch fused[B]
    --json PATH      -> profile.json is also copied to PATH
Every other option is the profiler's (python -m threethings_fast.profile --help).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Optional

from .profile.cli import run


def translate(argv: list) -> tuple[list, Optional[str]]:
    """(the profiler's arguments, the --json path or None) for the report's command line `argv`."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--json", default=None)
    known, rest = p.parse_known_args(argv)
    out = ["--preset", "report"]
    if known.model:
        out += ["--models", known.model]
    if known.backend:
        out += ["--providers", "reference", "branch_by_branch", f"fused[{known.backend}]"]
    return out + rest, known.json


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    profile_argv, json_path = translate(argv)
    code, out, result = run(profile_argv)
    if json_path and result is not None:
        shutil.copyfile(os.path.join(out, "profile.json"), json_path)
        print(f"profile.json copied to {json_path}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
