"""The umcam export specs: registered, IO shapes as the serving side expects, networks agree with them."""

from __future__ import annotations

import numpy as np
import torch

from export.registry import get_spec, model_names
from services.umcam import checkpoint
from services.umcam.networks import CamExport


def test_registered_with_their_io():
    assert {"umcam_cam", "umcam_unet"} <= set(model_names())
    cam, unet = get_spec("umcam_cam"), get_spec("umcam_unet")
    assert [(t.name, t.dtype, t.shape) for t in cam.inputs] == [("image", "float32", (1, 128, 128))]
    assert [(t.name, t.shape) for t in cam.outputs] == [("presence", (1,)), ("cams", (3, 128, 128))]
    assert [(t.name, t.shape) for t in unet.outputs] == [("logits", (2, 128, 128))]
    assert cam.preprocessing()["modality"] == "MR" and unet.preprocessing()["classes"] == ["background", "brain"]


def test_networks_give_the_declared_shapes():
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 1, 128, 128)).astype(np.float32))
    with torch.no_grad():
        presence, cams = CamExport(checkpoint.load_classifier()).eval()(x)
        logits = checkpoint.load_unet()(x)
    assert presence.shape == (2, 1) and ((presence >= 0) & (presence <= 1)).all()
    assert cams.shape == (2, 3, 128, 128) and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert logits.shape == (2, 2, 128, 128)
