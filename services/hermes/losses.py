"""The Hermes training loss: per-task sigmoid Dice + BCE over the supervised tasks only, plus modality CE.

Partial labels are the reason Hermes exists: a sample from the lung-tumour CTs labels the tumour only,
so its liver channel is *unlabelled*, not background. Each (sample, task) pair therefore carries a
``supervised`` flag and only flagged pairs enter the segmentation loss; padding (task -1, the null
token) is never supervised.

    loss, parts = hermes_loss(seg_logits, masks, supervised, mod_logits, modality)
    # seg_logits, masks (B, T, D, H, W); supervised (B, T) bool; mod_logits (B, M); modality (B,) (-1: ignore)

Differences from the upstream loss (METHODS §7b): Dice and BCE weigh 1:1 (upstream adapts the two
weights per step within [0.2, 0.8]); the modality weight is the same 0.01.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["MODALITY_WEIGHT", "per_task_dice_loss", "per_task_bce", "hermes_loss"]

MODALITY_WEIGHT = 0.01
_SMOOTH = 1.0  # voxels; keeps an empty target with an empty prediction at zero loss


def per_task_dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft binary Dice loss per (sample, task): (B, T, ...) → (B, T)."""
    probs = torch.sigmoid(logits).flatten(2)
    targets = targets.to(probs.dtype).flatten(2)
    overlap = (probs * targets).sum(-1)
    return 1.0 - (2.0 * overlap + _SMOOTH) / (probs.sum(-1) + targets.sum(-1) + _SMOOTH)


def per_task_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy per (sample, task): (B, T, ...) → (B, T)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return bce.flatten(2).mean(-1)


def hermes_loss(seg_logits: torch.Tensor, masks: torch.Tensor, supervised: torch.Tensor,
                mod_logits: torch.Tensor | None = None, modality: torch.Tensor | None = None,
                modality_weight: float = MODALITY_WEIGHT,
                empty_target_dice: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean Dice + BCE over the supervised (sample, task) pairs, + ``modality_weight`` × modality CE.

    Unsupervised pairs contribute nothing, not even through the mean's denominator: changing the
    prediction of an unlabelled task leaves the loss unchanged. With ``empty_target_dice`` False the Dice
    term is averaged over the supervised pairs whose mask has voxels only (BCE still over all of them): an
    empty mask's Dice costs nearly 1 for any predicted voxel, which a network that can switch a task off per
    patch (Hermes-R) learns to avoid at the expense of small organs (docs/hermes.md, "Sixth look").
    Returns the loss and its parts as floats (``dice``, ``bce``, ``modality``, ``supervised`` pairs)."""
    if seg_logits.shape != masks.shape:
        raise ValueError(f"seg_logits {tuple(seg_logits.shape)} and masks {tuple(masks.shape)} differ")
    if tuple(supervised.shape) != tuple(seg_logits.shape[:2]):
        raise ValueError(f"supervised must be (B, T) = {tuple(seg_logits.shape[:2])}, got {tuple(supervised.shape)}")
    weight = supervised.to(seg_logits.dtype)
    count = weight.sum()
    # where() rather than a product: unsupervised pairs get an exact zero and no gradient
    dice_pairs = supervised if empty_target_dice else supervised & masks.flatten(2).any(-1)
    dice = torch.where(dice_pairs, per_task_dice_loss(seg_logits, masks), torch.zeros_like(weight))
    bce = torch.where(supervised, per_task_bce(seg_logits, masks), torch.zeros_like(weight))
    denominator = count.clamp(min=1.0)
    dice_mean = dice.sum() / dice_pairs.sum().to(weight.dtype).clamp(min=1.0)
    bce_mean = bce.sum() / denominator
    loss = dice_mean + bce_mean
    mod_ce = seg_logits.new_zeros(())
    if mod_logits is not None and modality is not None and bool((modality >= 0).any()):
        mod_ce = F.cross_entropy(mod_logits, modality, ignore_index=-1)
        loss = loss + modality_weight * mod_ce
    parts = {"dice": float(dice_mean.detach()), "bce": float(bce_mean.detach()), "modality": float(mod_ce.detach()),
             "supervised": float(count.detach())}
    return loss, parts
