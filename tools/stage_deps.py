"""Print, for each stage of dvc.yaml, the churnlab code it runs that its deps do not list.

The same computation as tests/test_stage_deps.py (which fails on any such file): run this to
see what to add. A sub-package may be listed as its folder.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_stage_deps as check  # noqa: E402

for name, body in check.STAGES.items():
    deps = [str(d) for d in body.get("deps") or []]
    missing = sorted(
        str(p.relative_to(ROOT)) for p in check.stage_code(name) if not check.covered(p, deps)
    )
    print(f"{name}: {missing or 'complete'}")
