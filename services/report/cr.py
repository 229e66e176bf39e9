"""The real chest CR (MONOCHROME1, 1955×1841) of pydicom's test data, through the dataset fetcher
(services/common/datasets/pinned.toml: ``pydicom_chest_cr``, sha256-pinned)."""

from __future__ import annotations

import sys
from pathlib import Path

from services.common.datasets import fetch


def chest_cr_path() -> Path:
    return fetch("pydicom_chest_cr") / "RG1_UNCR.dcm"


def main() -> int:
    """``python -m services.report.cr``: the served checkpoint's report of the real CR, greedy and beam 3, with the
    head's calls and the consistency guard (PyTorch, the same search and thresholds as Triton)."""
    import torch

    from services.report import consistency, evaluate, images, serving
    from services.report.findings import FINDINGS

    torch.set_num_threads(1)
    model, vocab, _ = serving.load_served()
    pixels, _ = images.read_image(chest_cr_path().read_bytes())
    batch = images.preprocess(pixels)[:, 0] * 255.0  # evaluate.encode's 0..255 scale
    thresholds = consistency.load_thresholds()
    for beam in (1, 3):
        ids, probs = evaluate.generate(model, batch, beam_size=beam, thresholds=thresholds)
        text = vocab.decode(ids[0])
        calls = consistency.structured(dict(zip(FINDINGS, probs[0].tolist(), strict=True)), thresholds)
        guard = consistency.check(text, calls)
        sys.stdout.write(f"beam {beam}: present {[c.name for c in calls if c.present]}\n  text: {text}\n"
                         f"  consistency ok={guard.ok} missing={guard.missing} contradicted={guard.contradicted} "
                         f"unsupported={guard.unsupported}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
