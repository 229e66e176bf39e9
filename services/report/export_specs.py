"""Export specs of the report models (see export/registry.py): the KiUT encoder and one decode step as
ONNX, and ``report_generate``, a python-backend model that runs greedy or beam search over the two via BLS."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.spec import BatchingSpec, ExportSpec, PythonModelSpec, TensorSpec
from services.report import plan, serving
from services.report.findings import ABNORMAL, FINDINGS, NUM_FINDINGS

D = 128
VISUAL = 64


def _no_fastpath() -> None:
    """The fused transformer fast path (``aten::_transformer_encoder_layer_fwd``, native MHA) has no ONNX
    export; the plain path computes the same function."""
    import torch

    torch.backends.mha.set_fastpath_enabled(False)


def _encoder_module():  # noqa: ANN202
    from services.report.model import EncoderForExport

    _no_fastpath()
    model, _, _ = serving.load_served()
    return EncoderForExport(model).eval()


def _decoder_module():  # noqa: ANN202
    from services.report.model import DecoderStepForExport

    _no_fastpath()
    model, _, _ = serving.load_served()
    return DecoderStepForExport(model).eval()


def _context_len() -> int:
    model, _, _ = serving.load_served()
    return int(model.cfg.retrieved * model.kb_tokens.shape[1])


def _encoder_outputs() -> dict[str, np.ndarray]:
    import torch

    encoder = _encoder_module()
    with torch.no_grad():
        outs = encoder(torch.from_numpy(serving.example_images()))
    names = ("memory1", "memory2", "memory3", "context", "context_pad", "clinical", "finding_probs")
    return {n: o.numpy() for n, o in zip(names, outs, strict=True)}


def _decoder_example() -> dict[str, np.ndarray]:
    from services.report.reports import Vocabulary
    from services.report.train import plan_index

    enc = _encoder_outputs()
    vocab = Vocabulary.load(serving.vocab_path())
    words = vocab.encode("the heart is enlarged . there is a small left pleural effusion")[1:-1]
    model, _, _ = serving.load_served()
    calls = np.zeros((2, len(ABNORMAL)), dtype=bool)
    calls[:, [ABNORMAL.index("cardiomegaly"), ABNORMAL.index("pleural_effusion")]] = True
    prefix = plan.prefix(calls, ABNORMAL, plan_index(model.vocab_size)) if model.cfg.plan else np.ones((2, 1), np.int64)
    tokens = np.concatenate([prefix, np.array([words, words], dtype=np.int64)], axis=1)
    return {"tokens": tokens, **{k: v for k, v in enc.items() if k != "finding_probs"}}


def _report_encoder() -> ExportSpec:
    ctx = _context_len()
    return ExportSpec(
        name=serving.ENCODER,
        description="KiUT encoder: CNN visual extractor + 3-layer transformer (3 memory levels for the U-connection), "
                    "finding head, symptom-graph GCN and report retrieval; see docs/report.md",
        build_model=_encoder_module,
        example_inputs=lambda: {"image": serving.example_images()},
        inputs=(TensorSpec("image", "float32", (1, 128, 128)),),
        outputs=(TensorSpec("memory1", "float32", (VISUAL, D)), TensorSpec("memory2", "float32", (VISUAL, D)),
                 TensorSpec("memory3", "float32", (VISUAL, D)), TensorSpec("context", "float32", (ctx, D)),
                 TensorSpec("context_pad", "float32", (ctx,)), TensorSpec("clinical", "float32", (NUM_FINDINGS, D)),
                 TensorSpec("finding_probs", "float32", (NUM_FINDINGS,))),
        checkpoint=serving.checkpoint_path(),
        training=serving.training_facts(),
        preprocessing=serving.preprocessing_spec,
        validation_metrics=serving.validation_metrics,
        parity_atol=1e-4,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=8),
    )


def _report_decoder() -> ExportSpec:
    ctx = _context_len()
    return ExportSpec(
        name=serving.DECODER,
        description="KiUT decoder step: token prefix + memories + knowledge (injected-knowledge distiller) → "
                    "next-token log-probabilities; the prefix is recomputed each step",
        build_model=_decoder_module,
        example_inputs=_decoder_example,
        inputs=(TensorSpec("tokens", "int64", (-1,)), TensorSpec("memory1", "float32", (VISUAL, D)),
                TensorSpec("memory2", "float32", (VISUAL, D)), TensorSpec("memory3", "float32", (VISUAL, D)),
                TensorSpec("context", "float32", (ctx, D)), TensorSpec("context_pad", "float32", (ctx,)),
                TensorSpec("clinical", "float32", (NUM_FINDINGS, D))),
        outputs=(TensorSpec("log_probs", "float32", (-1,)),),
        checkpoint=serving.checkpoint_path(),
        training=serving.training_facts(),
        preprocessing=serving.preprocessing_spec,
        parity_atol=1e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=16),
    )


def _report_generate() -> PythonModelSpec:
    here = Path(__file__).parent
    return PythonModelSpec(
        name=serving.GENERATE,
        description="KiUT report generation: encoder once, then greedy (beam_size 1) or beam search over the "
                    "decoder step via BLS after the finding plan (the finding probabilities at the thresholds "
                    "calibrated on validation); returns the report text and the finding probabilities",
        model_file=here / "triton_model.py",
        inputs=(TensorSpec("image", "float32", (1, 1, 128, 128)), TensorSpec("beam_size", "int32", (1,))),
        outputs=(TensorSpec("text", "bytes", (1,)), TensorSpec("finding_probs", "float32", (NUM_FINDINGS,))),
        composes=(serving.ENCODER, serving.DECODER),
        files=lambda: {"vocab.json": serving.vocab_path(), "search.py": here / "search.py",
                       "plan.py": here / "plan.py", "thresholds.json": serving.checkpoint_dir() / "thresholds.json"},
        parameters={"max_tokens": str(serving.MAX_TOKENS), "max_beam": "5", "findings": ",".join(FINDINGS)},
        training=serving.training_facts(),
        preprocessing=serving.preprocessing_spec,
        validation_metrics=serving.validation_metrics,
    )


SPECS = {
    serving.ENCODER: _report_encoder,
    serving.DECODER: _report_decoder,
    serving.GENERATE: _report_generate,
}
