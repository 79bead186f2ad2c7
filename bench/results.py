"""Writing a benchmark's section of bench/RESULTS.md: each benchmark owns the block between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and replaces only that on a rerun."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_block(name: str, title: str, text: str, results: Path = RESULTS) -> None:
    """Replace the ``name`` block, or append it under the heading ``title``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = results.read_text()
    block = f"{start}\n{text}\n{end}"
    if start in body and end in body:
        body = body[: body.index(start)] + block + body[body.index(end) + len(end) :]
    else:
        body += f"\n{title}\n\n{block}\n"
    results.write_text(body)
