"""The shell commands the docs give, so tests run them exactly as a user would paste them."""
from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def shell_lines(page: str, containing: str) -> list[str]:
    """The lines of `docs/<page>`'s ```sh blocks that contain `containing`, in page order."""
    blocks = re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", (DOCS / page).read_text(), re.M | re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if containing in line]
    if not lines:
        raise LookupError(f"docs/{page} has no shell line with {containing!r}")
    return lines
