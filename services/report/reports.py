"""Open-i (IU-Xray) reports: parsing, cleaning, tokenising, the vocabulary, and the split by report.

    reports = load_reports()                 # 3,955 parsed; those with FINDINGS text are used
    vocab = Vocabulary.build(r.text for r in split_reports(reports)["train"])
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.report.findings import ABNORMAL, FINDINGS, PADCHEST, from_mesh, label_text, to_vector

MAX_TOKENS = 60  # R2Gen / KiUT setting for IU-Xray
PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


@dataclass(frozen=True)
class Report:
    uid: str
    findings_text: str
    impression: str
    mesh: tuple[str, ...]

    @property
    def text(self) -> str:
        """The generation target: the cleaned FINDINGS section (R2Gen's IU-Xray convention)."""
        return clean(self.findings_text)

    @property
    def labels(self) -> np.ndarray:
        """Finding vector from the MeSH major headings, completed by the labeller on the findings text
        where MeSH says nothing ("No Indexing")."""
        mesh = from_mesh(self.mesh)
        if not self.mesh or any(m.lower().startswith("no indexing") for m in self.mesh):
            mesh = label_text(self.findings_text + " " + self.impression)
        return to_vector(mesh)


def clean(text: str) -> str:
    """Lower case, numbering and punctuation other than full stops removed, ' . ' between sentences."""
    text = text.lower().replace("..", ".")
    text = re.sub(r"\b\d+\.\s", " ", text)
    parts = []
    for sentence in re.split(r"\.\s*", text):
        sentence = re.sub(r"[^a-z0-9 ]", " ", sentence.replace("-", " "))
        sentence = re.sub(r"\s+", " ", sentence).strip()
        if sentence:
            parts.append(sentence)
    return " . ".join(parts) + " ." if parts else ""


def reports_archive() -> Path:
    from services.common.datasets import fetch

    return fetch("iu_xray_reports") / "NLMCXR_reports.tgz"


def padchest_labels_file() -> Path:
    from services.common.datasets import fetch

    return fetch("iu_xray_reports") / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def parse_report(xml: bytes) -> Report:
    root = ET.fromstring(xml)
    sections = {node.get("Label"): (node.text or "").strip() for node in root.iter("AbstractText")}
    uid = root.find("uId").get("id", "") if root.find("uId") is not None else ""
    mesh = tuple((node.text or "").strip() for node in root.iter("major") if node.text)
    return Report(uid, sections.get("FINDINGS", ""), sections.get("IMPRESSION", ""), mesh)


def load_reports(archive: Path | None = None) -> list[Report]:
    """Every report of the archive, sorted by id."""
    archive = archive or reports_archive()
    found = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                handle = tar.extractfile(member)
                if handle is not None:
                    found.append(parse_report(handle.read()))
    return sorted(found, key=lambda r: int(re.sub(r"\D", "", r.uid) or 0))


def usable(reports: Iterable[Report]) -> list[Report]:
    """Reports with a FINDINGS section (3,425 of 3,955)."""
    return [r for r in reports if r.text]


def split_of(uid: str, seed: int = 0) -> str:
    """train 70 % / val 10 % / test 20 % by a hash of the report id (R2Gen's proportions), stable across runs."""
    h = int(hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if h < 0.7 else "val" if h < 0.8 else "test"


def split_reports(reports: Iterable[Report], seed: int = 0) -> dict[str, list[Report]]:
    out: dict[str, list[Report]] = {"train": [], "val": [], "test": []}
    for report in usable(reports):
        out[split_of(report.uid, seed)].append(report)
    return out


class Vocabulary:
    """Word-level vocabulary (R2Gen keeps words seen at least 3 times in training reports)."""

    def __init__(self, words: list[str]) -> None:
        if list(words[:4]) != list(SPECIALS):
            raise ValueError(f"words must start with {SPECIALS}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 3) -> Vocabulary:
        counts = Counter(w for t in texts for w in t.split())
        return cls([*SPECIALS, *sorted(w for w, c in counts.items() if c >= min_count)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """``[BOS, w1, …, wn, EOS]`` with at most ``max_tokens`` words."""
        ids = [self.index.get(w, UNK) for w in text.split()][:max_tokens]
        return [BOS, *ids, EOS]

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else "<unk>")
        return " ".join(words)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"words": self.words}, indent=0))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls(json.loads(Path(path).read_text())["words"])


def pretty(text: str) -> str:
    """'the heart is normal . lungs are clear .' → 'The heart is normal. Lungs are clear.'"""
    sentences = [s.strip() for s in text.split(" .") if s.strip()]
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def padchest_label_vectors(path: Path | None = None, limit: int | None = None) -> np.ndarray:
    """PadChest rows as finding vectors (rows whose labels map to none of the findings are dropped)."""
    import csv

    path = path or padchest_labels_file()
    rows = []
    with gzip.open(path, "rt", newline="") as handle:
        for i, row in enumerate(csv.DictReader(io.TextIOWrapper(handle.buffer, encoding="utf-8"))):
            if limit is not None and i >= limit:
                break
            raw = row.get("Labels") or ""
            names = {t.strip().strip("'\"").strip().lower() for t in raw.strip("[]").split(",") if t.strip()}
            found = dict.fromkeys(FINDINGS, False)
            for name in names:
                if name in PADCHEST:
                    found[PADCHEST[name]] = True
            if not any(found.values()):
                continue
            if any(found[n] for n in ABNORMAL):
                found["normal"] = False
            rows.append(to_vector(found))
    return np.stack(rows) if rows else np.zeros((0, len(FINDINGS)), np.float32)


def statistics() -> dict:
    """Split sizes, finding counts, vocabulary size, and how well the rule labeller (on FINDINGS +
    IMPRESSION text) agrees with the MeSH-derived labels (F1 per finding, all usable reports)."""
    reports = load_reports()
    splits = split_reports(reports)
    use = usable(reports)
    mesh = np.stack([r.labels for r in use])
    rules = np.stack([to_vector(label_text(r.findings_text + " " + r.impression)) for r in use])
    agreement = {}
    for i, name in enumerate(FINDINGS):
        tp = float((mesh[:, i] * rules[:, i]).sum())
        agreement[name] = round(float(2 * tp / max(mesh[:, i].sum() + rules[:, i].sum(), 1)), 3)
    return {"reports": len(reports), "with_findings": len(use), "splits": {k: len(v) for k, v in splits.items()},
            "finding_counts": {n: int(c) for n, c in zip(FINDINGS, mesh.sum(0), strict=True)},
            "vocabulary": len(Vocabulary.build(r.text for r in splits["train"])),
            "labeller_vs_mesh_f1": agreement}


if __name__ == "__main__":
    print(json.dumps(statistics(), indent=1))  # noqa: T201
