"""The partial-label Hermes loss, and a tiny overfit of the network with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.hermes.data import Sample, collate
from services.hermes.losses import hermes_loss
from services.hermes.network import HermesConfig, HermesR

TINY = HermesConfig(channels=(8, 8, 16, 16, 16), fusion_blocks=(1, 1, 1, 1, 1), tokens_per_modality=2, head_dim=8)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    masks = (torch.rand(2, 3, 4, 4, 4, generator=g) > 0.5).float()
    supervised = torch.tensor([[True, True, False], [True, False, False]])
    return logits, masks, supervised


def test_unlabelled_tasks_do_not_change_the_loss_or_get_gradients() -> None:
    logits, masks, supervised = _batch()
    mod_logits, modality = torch.tensor([[1.0, -1.0], [0.5, 0.2]]), torch.tensor([0, -1])
    logits.requires_grad_(True)
    loss, parts = hermes_loss(logits, masks, supervised, mod_logits, modality)
    loss.backward()
    assert parts["supervised"] == 3.0
    assert logits.grad is not None
    assert logits.grad[~supervised].abs().max() == 0 and logits.grad[supervised].abs().max() > 0
    changed = logits.detach().clone()
    changed[0, 2] = 50.0  # confidently "present" where the sample has no label: not background
    changed[1, 1:] = -50.0
    again, _ = hermes_loss(changed, masks, supervised, mod_logits, modality)
    assert torch.equal(loss.detach(), again)
    changed[0, 0] += 1.0  # a labelled task does change it
    assert not torch.equal(loss.detach(), hermes_loss(changed, masks, supervised, mod_logits, modality)[0])


def test_modality_loss_ignores_unknown_modalities_and_no_supervision_gives_zero() -> None:
    logits, masks, supervised = _batch()
    none = torch.zeros_like(supervised)
    loss, parts = hermes_loss(logits, masks, none, torch.randn(2, 2), torch.tensor([-1, -1]))
    assert float(loss) == 0.0 and parts["supervised"] == 0.0
    with_mod, parts = hermes_loss(logits, masks, none, torch.tensor([[5.0, -5.0], [0.0, 0.0]]), torch.tensor([1, -1]))
    assert abs(parts["modality"] - 10.0) < 1e-3 and abs(float(with_mod) - 0.1) < 1e-4


def test_empty_masks_can_be_left_out_of_the_dice_term_only() -> None:
    logits = torch.full((1, 2, 4, 4, 4), 2.0)  # every voxel predicted for both tasks
    masks = torch.zeros(1, 2, 4, 4, 4)
    masks[0, 0, :2] = 1  # task 0: half of the voxels; task 1: an empty mask
    supervised = torch.tensor([[True, True]])
    _, counted = hermes_loss(logits, masks, supervised)
    _, skipped = hermes_loss(logits, masks, supervised, empty_target_dice=False)
    dice_task0 = 1 - (2 * 32 * torch.sigmoid(torch.tensor(2.0)) + 1) / (64 * torch.sigmoid(torch.tensor(2.0)) + 32 + 1)
    assert skipped["dice"] == pytest.approx(float(dice_task0), abs=1e-5)  # the empty mask's Dice is not averaged in
    assert counted["dice"] > skipped["dice"] + 0.3  # there it costs about 1
    assert skipped["bce"] == counted["bce"] and skipped["supervised"] == counted["supervised"] == 2
    _, only_empty = hermes_loss(logits, masks, torch.tensor([[False, True]]), empty_target_dice=False)
    assert only_empty["dice"] == 0.0 and only_empty["bce"] > 0


def test_twenty_iterations_overfit_one_tiny_batch() -> None:
    torch.manual_seed(0)
    zz, yy, xx = np.mgrid[:32, :32, :32]
    ball = ((zz - 14) ** 2 + (yy - 16) ** 2 + (xx - 18) ** 2 < 64).astype(np.uint8)
    box = np.zeros((32, 32, 32), np.uint8)
    box[8:20, 10:26, 6:14] = 1
    ct = Sample(np.where(ball | box, 0.5, -0.8).astype(np.float32), 0, (0, 1), np.stack([ball, box]), "ct")
    mr = Sample(np.where(box, 0.8, -0.2).astype(np.float32), 1, (12,), box[None], "mr")
    batch = collate([ct, mr])
    net = HermesR(TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        seg, mod = net(batch["image"], batch["tasks"], batch["modality"])
        loss, _ = hermes_loss(seg, batch["masks"], batch["supervised"], mod, batch["modality"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
