"""Held-out Dice of a trained Hermes checkpoint on every test volume of ``data.SPLITS``, on the model grid.

    python -m services.hermes.heldout .cache/hermes_runs/hermes_s0      # JSON: {"<volume>:<task>": Dice}
    python -m services.hermes.heldout CHECKPOINT --kernels              # + cosine of the CT organs' kernels
    python -m services.hermes.heldout CHECKPOINT --synthetic 16         # + Dice on 16 training-like synthetic patches

A first check after training, not the family evaluation (issue #21 asks for `medstack evaluate hermes`, with
the baselines in the same run and the masks scored on the input grid). Each test volume runs once with the
task list of its modality (`inference` policy "modality") and every task the volume labels is scored
(threshold 0.5).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from services.hermes.data import test_volumes
from services.hermes.inference import HermesModel, HermesSegmenter
from services.hermes.tasks import TASKS
from services.segmentation.evaluate import dice

__all__ = ["heldout_dice", "organ_kernel_cosines", "synthetic_patch_dice", "main"]


def heldout_dice(model: HermesModel, segmenter: HermesSegmenter | None = None) -> dict[str, float | None]:
    """Dice per (test volume, labelled task); None where prediction and label are both empty."""
    segmenter = segmenter or HermesSegmenter()
    scores: dict[str, float | None] = {}
    for name, volume in test_volumes().items():
        run = segmenter.run_list(model, [t for t in TASKS if t.name in volume.masks], volume.modality)
        probs = segmenter.grid_probabilities(volume.image.array, model, run, volume.modality)
        for prob, task in zip(probs, run, strict=True):
            if task.name in volume.masks:
                value = dice(prob > 0.5, volume.masks[task.name])
                scores[f"{name}:{task.name}"] = None if math.isnan(value) else round(value, 4)
    return scores


def synthetic_patch_dice(model: HermesModel, patches: int, seed: int = 123) -> dict[str, float]:
    """Dice per CT organ pooled over ``patches`` synthetic CT patches drawn like the training ones (64³,
    organ-balanced centres, ``seed``): the training domain, to tell under-fitting from synthetic-to-real loss."""
    import numpy as np

    from services.hermes.data import ORGAN_TASKS, SyntheticOrganSampler

    sampler, rng = SyntheticOrganSampler(), np.random.default_rng(seed)
    run = [t for t in TASKS if t.name in ORGAN_TASKS]
    predict = model.predictor([t.index for t in run], 0)
    overlap, total = np.zeros(len(run)), np.zeros(len(run))
    for _ in range(patches):
        sample = sampler.sample(rng)
        pred = predict(sample.image[None, None])[0] > 0.0  # logit 0 = probability 0.5
        truth = sample.masks.astype(bool)  # ORGAN_TASKS order, as ``run``
        overlap += (pred & truth).sum(axis=(1, 2, 3))
        total += pred.sum(axis=(1, 2, 3)) + truth.sum(axis=(1, 2, 3))
    return {t.name: round(float(2 * o / n), 4) if n else float("nan")
            for t, o, n in zip(run, overlap, total, strict=True)}


def organ_kernel_cosines(model: HermesModel, seed: int = 5) -> dict[str, dict[str, float]]:
    """Cosine similarity between the 11 CT organs' per-task 1×1×1 kernels (weights, bias excluded) that a
    Hermes-R classifier computes for one synthetic CT patch (``seed``): near 1 for two tasks means the head
    cannot tell them apart (why ``HermesConfig.task_kernels`` exists; docs/hermes.md)."""
    import numpy as np

    from services.hermes.data import ORGAN_TASKS, SyntheticOrganSampler
    from services.hermes.network import HermesR

    net = model.net.eval()
    if not isinstance(net, HermesR):
        raise ValueError("kernel cosines need a Hermes-R checkpoint")
    sample = SyntheticOrganSampler().sample(np.random.default_rng(seed))
    tasks = torch.tensor([[TASKS.index(t) for t in TASKS if t.name in ORGAN_TASKS]])
    captured: list[torch.Tensor] = []
    hook = net.classifier.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        with torch.no_grad():
            net(torch.from_numpy(sample.image)[None, None], tasks, torch.tensor([0]))
            params = net.classifier.kernels(captured[0], tasks)[0]
    finally:
        hook.remove()
    weights = torch.nn.functional.normalize(params[:, :-1], dim=1)
    cosine = (weights @ weights.T).numpy()
    names = [TASKS[int(t)].name for t in tasks[0]]
    return {a: {b: round(float(cosine[i, j]), 2) for j, b in enumerate(names) if b != a} for i, a in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.hermes.heldout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernels", action="store_true", help="also the cosines of the CT organs' head kernels")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also the Dice on N synthetic training-like CT patches")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    model = HermesModel.from_checkpoint(args.checkpoint)
    out: dict = {"checkpoint": str(args.checkpoint), "dice": heldout_dice(model)}
    if args.kernels:
        out["organ_kernel_cosines"] = organ_kernel_cosines(model)
    if args.synthetic:
        out["synthetic_patch_dice"] = synthetic_patch_dice(model, args.synthetic)
    print(json.dumps({**out, "seconds": round(time.monotonic() - start, 1)}, indent=2))  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
