"""environment.yml for conda users, made from requirements.lock so that the two agree."""

from __future__ import annotations

import re
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)")


def locked_pins(lock_text: str) -> dict[str, str]:
    """``{name: version}`` for every ``name==version`` line of a pip lock file."""
    pins = {}
    for line in lock_text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def environment_yaml(pins: dict[str, str]) -> str:
    """A conda environment: Python 3.11 from conda, everything else the locked pip pins."""
    lines = [
        "# Made by `make lock` from requirements.lock: do not edit by hand.",
        "# conda env create -f environment.yml && conda activate churnlab",
        "name: churnlab",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - pip:",
        *(f"      - {name}=={version}" for name, version in sorted(pins.items())),
        "      - -e .",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    environment, lock = Path(argv[0]), Path(argv[1])
    environment.write_text(environment_yaml(locked_pins(lock.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
