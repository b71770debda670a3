"""The marked sections of bench/RESULTS.md that each benchmark writes (``<!-- name -->``)."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(name: str, text: str, target: Path) -> None:
    """Put ``text`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``target``: in place
    of the section's earlier text, or at the end when the file has no such section yet."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    body = target.read_text() if target.is_file() else ""
    block = f"{start}\n{text}\n{end}"
    if start in body and end in body:
        body = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    target.write_text(body)
