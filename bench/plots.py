"""PNG plots for docs/benchmarks.md (matplotlib, headless). Each takes result files and writes one PNG.

    load_timeline(docs/load/mixed_stats_history.csv, docs/img/load_timeline.png)
    perf_latency(rows, docs/img/perf_latency.png)         # rows from bench.perf_analyzer
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _float(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load_timeline(history_csv: Path, png: Path) -> Path:
    """Users, throughput and latency percentiles over the run, from locust's stats history."""
    with history_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    if not rows:
        raise ValueError(f"{history_csv} has no aggregated rows")
    t0 = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.plot(t, [_float(r["Requests/s"]) for r in rows], label="requests/s", color="tab:blue")
    top.plot(t, [_float(r["Failures/s"]) for r in rows], label="failures/s", color="tab:red")
    top.set_ylabel("per second")
    users = top.twinx()
    users.plot(t, [_float(r["User Count"]) for r in rows], color="tab:gray", linestyle="--", label="users")
    users.set_ylabel("users")
    top.legend(loc="center right")
    top.set_title("make load: mixed profile")
    for column, color in (("50%", "tab:green"), ("95%", "tab:orange"), ("99%", "tab:purple")):
        bottom.plot(t, [_float(r[column]) for r in rows], label=f"p{column.rstrip('%')}", color=color)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency, ms (incl. whole-job entries)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="center right")
    return _save(fig, png)


def perf_latency(rows: list[dict[str, Any]], png: Path) -> Path:
    """perf_analyzer: p50/p95/p99 latency and throughput vs concurrency, one line per variant."""
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_variant[row["variant"]].append(row)
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"p50_ms": "-", "p95_ms": "--"}
    for i, (variant, points) in enumerate(sorted(by_variant.items())):
        points.sort(key=lambda r: r["concurrency"])
        x = [p["concurrency"] for p in points]
        color = f"C{i}"
        for key, style in styles.items():
            lat.plot(x, [p[key] for p in points], style, color=color, marker="o", markersize=3,
                     label=f"{variant} {key.split('_')[0]}")
        thr.plot(x, [p["throughput"] for p in points], "-", color=color, marker="o", label=variant)
    lat.set_xlabel("concurrent requests")
    lat.set_ylabel("latency per request, ms")
    lat.set_title("latency p50 (solid) and p95 (dashed) vs concurrency")
    lat.legend(fontsize=7)
    thr.set_xlabel("concurrent requests")
    thr.set_ylabel("inferences/s")
    thr.set_title("throughput vs concurrency")
    thr.legend(fontsize=8)
    for ax in (lat, thr):
        ax.set_xticks(sorted({r["concurrency"] for r in rows}))
    return _save(fig, png)


def perf_split(rows: list[dict[str, Any]], png: Path) -> Path:
    """Where the time of one request goes (queue, compute, transfer) per variant and concurrency."""
    rows = sorted(rows, key=lambda r: (r["variant"], r["concurrency"]))
    labels = ["\n".join([*r["variant"].split(" + "), f"c={r['concurrency']}"]) for r in rows]
    parts = (("queue_ms", "queue", "tab:orange"), ("compute_ms", "compute", "tab:blue"),
             ("transfer_ms", "client/transfer", "tab:gray"))
    fig, ax = plt.subplots(figsize=(max(6, 0.95 * len(rows)), 4.2))
    bottom = [0.0] * len(rows)
    for key, label, color in parts:
        values = [r[key] for r in rows]
        ax.bar(labels, values, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("ms per request (average)")
    ax.set_title("perf_analyzer: time split per request")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend()
    return _save(fig, png)


def bars(labels: list[str], series: dict[str, list[float]], png: Path, title: str, ylabel: str,
         note: str = "") -> Path:
    """Grouped bars: one group per label, one bar per series (e.g. p50 and p95)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels)), 4))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        positions = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(positions, values, width=width, label=name)
        for x, v in zip(positions, values, strict=True):
            ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=7)
    ax.set_ylim(top=1.18 * max((v for values in series.values() for v in values), default=1.0))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8, rotation=12)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if note:
        ax.text(0.99, 0.97, note, transform=ax.transAxes, ha="right", va="top", fontsize=7, color="dimgray")
    if len(series) > 1:
        ax.legend()
    return _save(fig, png)
