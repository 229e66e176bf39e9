"""The finding plan the decoder writes from (issue #26): one token per abnormal finding, present or absent.

Every report is decoded after a fixed prefix ``<bos> <±cardiomegaly> <±pleural_effusion> … <±support_devices>``:

* in training the plan is what the reference text says (the rule labeller of clinical efficacy on the report),
  so the decoder learns to realise a plan, and never learns to predict plan tokens (their targets are ignored);
* in use the plan is the finding head's call at the thresholds calibrated on the validation split
  (``thresholds.json``; a finding whose head is not validated there is planned absent).

Why: trained on image features alone the decoder wrote the normal template for 622 of 707 test images while
the head saw effusion with p 0.9; the plan puts the head's decision where every word can attend to it.

NumPy only: the Triton python-backend model ships this file beside its model.py, so serving and evaluation
build the same prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BOS = 1


def words(findings: Sequence[str]) -> list[str]:
    """The plan's vocabulary entries: ``<+name>`` and ``<-name>`` per planned finding."""
    return [w for name in findings for w in (f"<+{name}>", f"<-{name}>")]


def prefix(present: np.ndarray, findings: Sequence[str], index: Mapping[str, int]) -> np.ndarray:
    """``present (N, F)`` bool → ``(N, 1 + F)`` int64 token ids: ``<bos>`` then one plan token per finding."""
    present = np.asarray(present, dtype=bool)
    if present.ndim != 2 or present.shape[1] != len(findings):
        raise ValueError(f"present must be (N, {len(findings)}), got {present.shape}")
    plus = np.array([index[f"<+{name}>"] for name in findings], dtype=np.int64)
    minus = np.array([index[f"<-{name}>"] for name in findings], dtype=np.int64)
    body = np.where(present, plus[None, :], minus[None, :])
    return np.concatenate([np.full((len(present), 1), BOS, dtype=np.int64), body], axis=1)


def head_calls(probs: np.ndarray, names: Sequence[str], thresholds: Mapping[str, Mapping[str, Any]],
               findings: Sequence[str]) -> np.ndarray:
    """``probs (N, len(names))`` → ``(N, F)`` bool: probability ≥ the finding's calibrated threshold, and only for
    findings whose head was validated (``checked``); the rest are planned absent."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(names))
    out = np.zeros((len(probs), len(findings)), dtype=bool)
    for j, name in enumerate(findings):
        spec = thresholds[name]
        if spec.get("checked", True):
            out[:, j] = probs[:, list(names).index(name)] >= float(spec["threshold"])
    return out
