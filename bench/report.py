"""docs/benchmarks.md is made of sections, one per benchmark, each owned by the command that writes it.

``write_section`` replaces the section whose ``## heading`` is the first line of the new text and
leaves the others alone; copies of the same heading left by earlier runs are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.settings import REPO_ROOT

BENCHMARKS = REPO_ROOT / "docs" / "benchmarks.md"
PREAMBLE = "# Benchmarks\n\nEach section names the command that produced it.\n"


def split_sections(text: str) -> tuple[str, list[str]]:
    """(preamble, sections), each section starting with its ``## `` line."""
    parts = re.split(r"(?m)^(?=## )", text)
    return parts[0], [p.rstrip("\n") + "\n" for p in parts[1:]]


def heading_of(section: str) -> str:
    first = section.lstrip("\n").splitlines()[0]
    if not first.startswith("## "):
        raise ValueError(f"a section starts with its '## ' heading, not {first!r}")
    return first.strip()


def write_section(section: str, path: Path = BENCHMARKS) -> Path:
    heading = heading_of(section)
    text = path.read_text() if path.exists() else PREAMBLE
    preamble, sections = split_sections(text)
    new = section.strip("\n") + "\n"
    out, placed = [], False
    for existing in sections:
        if heading_of(existing) != heading:
            out.append(existing)
        elif not placed:
            out.append(new)
            placed = True
    if not placed:
        out.append(new)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(preamble.rstrip("\n") + "\n\n" + "\n".join(out).rstrip("\n") + "\n")
    return path


def read_section(heading: str, path: Path = BENCHMARKS) -> str | None:
    if not path.exists():
        return None
    return next((s for s in split_sections(path.read_text())[1] if heading_of(s) == heading), None)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_table(section: str) -> list[dict[str, str]]:
    """The first markdown table of a section as rows keyed by its header cells (markup stripped)."""
    lines = [line.strip() for line in section.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return []
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip().strip("*`") for cell in line.strip("|").split("|")])
    header, body = table[0], [row for row in table[1:] if not set("".join(row)) <= set("-: ")]
    return [dict(zip(header, row, strict=False)) for row in body]


def number(text: str) -> float | None:
    """The first number in a table cell ("1.93×", "2,111", "12.4 ms"), or None."""
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", text)
    return float(match.group().replace(",", "")) if match else None


def order_sections(headings: list[str], path: Path = BENCHMARKS) -> None:
    """Put the named sections first, in this order; the others keep theirs after them."""
    preamble, sections = split_sections(path.read_text())
    rank = {h: i for i, h in enumerate(headings)}
    ordered = sorted(sections, key=lambda s: rank.get(heading_of(s), len(rank)))
    path.write_text(preamble.rstrip("\n") + "\n\n" + "\n".join(ordered).rstrip("\n") + "\n")
