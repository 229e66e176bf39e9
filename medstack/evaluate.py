"""``medstack evaluate``: every family's held-out evaluation beside its trivial baselines, in one run.

    medstack evaluate                     # all families: docs/results/<family>.json + tables in docs/models.md
    medstack evaluate localization report # some families
    medstack evaluate --quick             # the regression guard of `make test`: small slices, nothing written

A full run records, per family, the full comparisons and the quick slice's figures. ``--quick``
reruns the quick slice and fails when one of our figures falls below the recorded quick figure by
more than the family's tolerance (direction-aware). It compares against what is recorded, never
against the baseline: a model that loses to its baseline is recorded as losing, and passes the guard
as long as it does not get worse. No timing is asserted.
"""

from __future__ import annotations

import datetime as dt
import difflib
import importlib
import importlib.util
import json
import math
import pkgutil
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import services
from core.settings import REPO_ROOT
from services.common.comparisons import Comparison, FamilyEvaluation, FamilyResult

RESULTS_DIR = REPO_ROOT / "docs" / "results"
MODELS_DOC = REPO_ROOT / "docs" / "models.md"


@cache
def registry() -> dict[str, FamilyEvaluation]:
    """Every ``EVALUATION`` in ``services/<family>/evaluation.py``, by family name."""
    found: dict[str, FamilyEvaluation] = {}
    for family in pkgutil.iter_modules(services.__path__):
        module_name = f"services.{family.name}.evaluation"
        if family.ispkg and importlib.util.find_spec(module_name) is not None:
            evaluation = importlib.import_module(module_name).EVALUATION
            found[evaluation.family] = evaluation
    return dict(sorted(found.items()))


def resolve(names: list[str]) -> list[FamilyEvaluation]:
    known = registry()
    unknown = [name for name in names if name not in known]
    if unknown:
        hints = [difflib.get_close_matches(name, known, n=1) for name in unknown]
        suggestion = "".join(f"; did you mean {h[0]!r}?" for h in hints if h)
        raise KeyError(f"unknown family {', '.join(map(repr, unknown))}; registered: {', '.join(known)}{suggestion}")
    return [known[name] for name in names] if names else list(known.values())


def git_commit() -> str:
    """HEAD, with ``+dirty`` when tracked files differ from it (the figures may not be reproducible)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def results_path(family: str) -> Path:
    return RESULTS_DIR / f"{family}.json"


def recorded(family: str) -> dict[str, Any] | None:
    path = results_path(family)
    return json.loads(path.read_text()) if path.exists() else None


def _document(evaluation: FamilyEvaluation, full: FamilyResult, quick: FamilyResult) -> dict[str, Any]:
    return {
        "family": evaluation.family,
        "command": f"medstack evaluate {evaluation.family}",
        "served_models": list(evaluation.served_models),
        "git_commit": git_commit(),
        "date": dt.date.today().isoformat(),
        "data": full.data,
        "seeds": full.seeds,
        "comparisons": [c.as_dict() for c in full.comparisons],
        "details": full.details,
        "quick": {
            "command": f"medstack evaluate {evaluation.family} --quick",
            "tolerance": evaluation.tolerance,
            "data": quick.data,
            "comparisons": [c.as_dict() for c in quick.comparisons],
        },
    }


def run_full(evaluation: FamilyEvaluation, echo: Callable[[str], None]) -> dict[str, Any]:
    echo(f"[{evaluation.family}] full evaluation")
    full = evaluation.run(False)
    echo(f"[{evaluation.family}] quick slice (recorded for the regression guard)")
    quick = evaluation.run(True)
    document = _document(evaluation, full, quick)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results_path(evaluation.family).write_text(json.dumps(document, indent=2) + "\n")
    write_models_table(evaluation.family, document)
    return document


@dataclass(frozen=True)
class Regression:
    family: str
    name: str
    recorded: float
    now: float
    tolerance: float

    def __str__(self) -> str:
        return (f"{self.family}: {self.name} fell from {self.recorded} (recorded) to {self.now} "
                f"(tolerance {self.tolerance})")


def regressions(family: str, now: list[Comparison], document: dict[str, Any]) -> list[Regression]:
    """Our quick figures that fell below the recorded quick figures by more than the tolerance
    (the comparison's own where it has one, else the family's)."""
    quick = document["quick"]
    before = {c["name"]: c for c in quick["comparisons"]}
    found = []
    for comparison in now:
        old = before.get(comparison.name)
        if old is None:
            continue
        tolerance = quick["tolerance"] if old.get("tolerance") is None else old["tolerance"]
        drop = (old["ours"] - comparison.ours) if comparison.higher_is_better else (comparison.ours - old["ours"])
        if drop > tolerance or math.isnan(comparison.ours):
            found.append(Regression(family, comparison.name, old["ours"], comparison.ours, tolerance))
    missing = set(before) - {c.name for c in now}
    found += [Regression(family, name, before[name]["ours"], float("nan"), quick["tolerance"]) for name in missing]
    return found


def run_quick(evaluation: FamilyEvaluation, echo: Callable[[str], None]) -> list[Regression]:
    document = recorded(evaluation.family)
    if document is None:
        raise FileNotFoundError(f"no recorded results for {evaluation.family}: run `medstack evaluate "
                                f"{evaluation.family}` first ({results_path(evaluation.family)})")
    result = evaluation.run(True)
    for comparison in result.comparisons:
        echo(f"[{evaluation.family}] {comparison.name}: ours {comparison.ours} vs "
             f"{comparison.baseline_name} {comparison.baseline}")
    return regressions(evaluation.family, result.comparisons, document)


# ---- docs/models.md: one generated table per family -------------------------------------------------

def _markers(family: str) -> tuple[str, str]:
    return f"<!-- medstack evaluate {family}: start -->", f"<!-- medstack evaluate {family}: end -->"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def verdict(comparison: dict[str, Any]) -> str:
    """"yes" / "**no**" by the means, qualified when the interval of the difference includes 0 (or is missing),
    so a mean that favours one side by chance is not read as a result."""
    ci = comparison["ci95"]
    decided = ci is not None and (ci[0] > 0 or ci[1] < 0)
    word = "yes" if comparison["ours_wins"] else "**no**"
    if ci is None:
        return f"{word} (no interval)"
    return word if decided else f"{word} (interval includes 0)"


def table(document: dict[str, Any]) -> str:
    lines = [
        f"Generated by `{document['command']}` at commit `{document['git_commit'][:12]}` "
        f"({document['date']}); `docs/results/{document['family']}.json`. Data: {document['data']}",
        "",
        "| comparison | metric | ours | baseline | baseline value | ours − baseline, 95 % CI | samples | ours wins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in document["comparisons"]:
        ci = "—" if c["ci95"] is None else f"[{_number(c['ci95'][0])}, {_number(c['ci95'][1])}]"
        arrow = "↑" if c["higher_is_better"] else "↓"
        lines.append(f"| {c['name']} | {c['metric']} {arrow} | {_number(c['ours'])} | {c['baseline_name']} | "
                     f"{_number(c['baseline'])} | {ci} | {c['samples']} | {verdict(c)} |")
    return "\n".join(lines)


def write_models_table(family: str, document: dict[str, Any]) -> None:
    """Replace the family's block in docs/models.md (appended under "Evaluations" the first time)."""
    start, end = _markers(family)
    block = f"{start}\n### {family}\n\n{table(document)}\n{end}"
    text = MODELS_DOC.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        if "\n## Evaluations\n" not in text:
            text = text.rstrip("\n") + "\n\n## Evaluations\n\n" + EVALUATIONS_INTRO + "\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    MODELS_DOC.write_text(text)


EVALUATIONS_INTRO = """Each family's served model beside the trivial baselines a sceptic tries first, in the same run,
on data the model never saw in training (`medstack evaluate`, registry: `services/<family>/evaluation.py`).
The interval is a paired bootstrap 95 % interval of the mean difference ours − baseline over the
samples named (a family may use another interval and says so under samples); "ours wins" compares the means
and adds "(interval includes 0)" where the interval does not exclude a zero difference; "**no**" is recorded as
it is."""
