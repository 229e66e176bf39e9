"""Adapt an encoder to a labelled support set: one entry point for the service's job and for the evaluation.

Methods (hyper-parameters are module constants, the same for every task and shot count):

* ``linear``: MedFMC's Baseline: frozen features, centred on the support mean and L2-normalised → scikit-learn
  ``LogisticRegression`` (``LINEAR_C`` per encoder, lbfgs; one per class for multi-label, multinomial for multi-class).
* ``prototype``: Meta-Baseline: class centre = normalised mean of (centred) normalised support features, score = cosine
  × 10 (sigmoid per class for multi-label, with the threshold half-way between the support's mean positive and
  negative cosine; softmax for multi-class).
* ``prompt``: prompt tuning through the frozen encoder, VPT-style for a CNN: a learnable *input* prompt (the
  encoder's input shape, added to the image before the first layer) and a linear head on the L2-normalised
  features (started from the linear probe), trained together with AdamW (``PROMPT_STEPS`` steps of
  ``PROMPT_BATCH`` support images, bfloat16 autocast); the encoder is never updated.
* ``zeroshot``: the VLM's text embeddings of class prompts (``vlm.class_prompts``), no training.
* ``coop``: CoOp: ``COOP_CONTEXT`` learnable context token embeddings before each class's name tokens, run
  through the frozen MiniLM and the VLM's frozen text projection each step; trained with the task loss.
* ``cones``: ConES: the class concept embeddings themselves, in the space the text tower outputs (the VLM's
  joint space), initialised from the zero-shot prompts and optimised directly; no text encoder in the loop.

Text methods score ``scale · cos(image, class) + bias`` (multi-label: ``scale · (cos(image, positive) −
cos(image, negative)) + bias``, from "X" / "no X" prompts), so every head is the affine map of ``heads.apply``.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from services.common.resumable import bf16_available
from services.fewshot import encoders, networks
from services.fewshot.heads import METHODS, TEXT_METHODS, Head

# chosen on the support pools (select.py: other pool images as validation), never on test images
LINEAR_C = {"chest": 10.0, "chest-vlm": 0.1, "ct": 100.0}
LINEAR_CENTER = True
PROTOTYPE_SCALE, PROTOTYPE_CENTER = 10.0, True
# learning rates chosen on the chest pool (select.py), never on test images
PROMPT_STEPS, PROMPT_BATCH, PROMPT_LR, PROMPT_HEAD_LR, PROMPT_WD, PROMPT_LIMIT = 20, 24, 3e-4, 2e-3, 1e-4, 0.25
TEXT_STEPS, COOP_LR, COOP_BIAS_LR, CONES_LR, TEXT_WD = 60, 1e-3, 1e-2, 1e-4, 0.0
COOP_CONTEXT = 4
MAX_SUPPORT = 2000  # images per adaptation (the service's limit as well)


class AdaptationError(ValueError):
    """A support set or request that cannot be adapted; ``code`` is the problem type the service reports."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# ----------------------------------------------------------------------------------------------- checks
def check_request(encoder: str, method: str, class_names: list[str], images: np.ndarray, labels: np.ndarray,
                  multi_label: bool) -> np.ndarray:
    """Validate everything before any work; returns labels as float32 ``(N, C)`` 0/1 (multi-label) or int64
    ``(N,)``. Codes: unknown-encoder, unknown-method, method-needs-text-encoder, bad-classes, bad-images,
    bad-labels, too-many-images, class-without-examples."""
    if encoder not in encoders.ENCODERS:
        raise AdaptationError("unknown-encoder", f"unknown encoder {encoder!r}; known: {', '.join(encoders.ENCODERS)}")
    if method not in METHODS:
        raise AdaptationError("unknown-method", f"unknown method {method!r}; known: {', '.join(METHODS)}")
    meta = encoders.ENCODERS[encoder]
    if method in TEXT_METHODS and not meta.has_text:
        text = [n for n, e in encoders.ENCODERS.items() if e.has_text]
        raise AdaptationError("method-needs-text-encoder",
                              f"method {method!r} needs an encoder with a text tower ({', '.join(text)}); "
                              f"{encoder!r} has none")
    names = [str(n).strip() for n in class_names]
    if len(names) < (1 if multi_label else 2) or any(not n for n in names) or len(set(names)) != len(names):
        raise AdaptationError("bad-classes", f"need {'one' if multi_label else 'two'} or more distinct, non-empty "
                                             f"class names, got {list(class_names)!r}")
    images = np.asarray(images)
    if images.ndim != 1 + len(meta.input_shape) or tuple(images.shape[1:]) != meta.input_shape:
        raise AdaptationError("bad-images", f"images must be (N, {', '.join(map(str, meta.input_shape))}), "
                                            f"got {images.shape}")
    if len(images) > MAX_SUPPORT:
        raise AdaptationError("too-many-images", f"{len(images)} support images; at most {MAX_SUPPORT}")
    if not np.isfinite(images).all():
        raise AdaptationError("bad-images", "images hold non-finite values")
    labels = np.asarray(labels)
    c = len(names)
    if multi_label:
        if labels.shape != (len(images), c) or not np.isin(labels, (0, 1)).all():
            raise AdaptationError("bad-labels", f"multi-label labels must be (N, C) = ({len(images)}, {c}) of 0/1, "
                                                f"got shape {labels.shape}")
        empty = [names[j] for j in range(c) if labels[:, j].sum() == 0]
        labels = labels.astype(np.float32)
    else:
        if labels.shape != (len(images),) or not np.isin(labels, np.arange(c)).all():
            raise AdaptationError("bad-labels", f"multi-class labels must be (N,) = ({len(images)},) class indices "
                                                f"0…{c - 1}, got shape {labels.shape}")
        labels = labels.astype(np.int64)
        empty = [names[j] for j in range(c) if not (labels == j).any()]
    if empty and method != "zeroshot":  # zero-shot needs no support at all
        raise AdaptationError("class-without-examples", f"no support example for class(es) {', '.join(empty)}"
                                                        + (" (no positive)" if multi_label else ""))
    return labels


# ----------------------------------------------------------------------------------------------- entry point
def adapt(encoder: str, method: str, class_names: list[str], images: np.ndarray, labels: np.ndarray,
          multi_label: bool, seed: int = 0) -> Head:
    """``images``: preprocessed encoder inputs ``(N, *ENCODERS[encoder].input_shape)`` float32 (see
    ``encoders.preprocess``); ``labels``: ``(N, C)`` 0/1 (multi-label) or ``(N,)`` class indices.
    Raises AdaptationError (``unknown-method``, ``method-needs-text-encoder``, ``class-without-examples`` …).
    ``meta["adaptation_seconds"]``: wall time of the whole adaptation (support features included)."""
    y = check_request(encoder, method, class_names, images, labels, multi_label)
    names = [str(n).strip() for n in class_names]
    images = np.ascontiguousarray(images, dtype=np.float32)
    t0 = time.perf_counter()
    with _seeded(seed):
        if method == "prompt":
            arrays = fit_prompt(encoder, images, y, multi_label, seed)
        else:
            feats = networks.features(encoder, images) if len(images) else np.zeros((0, meta_dim(encoder)), np.float32)
            arrays = fit_on_features(encoder, method, names, feats, y, multi_label, seed)
    seconds = time.perf_counter() - t0
    meta = {"normalize": True, "seed": int(seed), "support_images": int(len(images)),
            "support_sha256": hashlib.sha256(images.tobytes() + np.asarray(y).tobytes()).hexdigest(),
            "adaptation_seconds": round(seconds, 3), "hyper_parameters": hyper_parameters(method)}
    if method in TEXT_METHODS:
        from services.fewshot import vlm

        meta["prompts"] = vlm.class_prompts(names, multi_label)
    return Head(method=method, encoder=encoder, class_names=names, multi_label=bool(multi_label),
                arrays={k: np.asarray(v, np.float32) for k, v in arrays.items()}, meta=meta).check()


def meta_dim(encoder: str) -> int:
    return encoders.ENCODERS[encoder].feature_dim


def hyper_parameters(method: str) -> dict:
    return {
        "linear": {"C_by_encoder": LINEAR_C, "solver": "lbfgs", "features": "support-mean centred, L2-normalised"
                   if LINEAR_CENTER else "L2-normalised"},
        "prototype": {"scale": PROTOTYPE_SCALE, "features": "support-mean centred, L2-normalised"
                      if PROTOTYPE_CENTER else "L2-normalised"},
        "prompt": {"steps": PROMPT_STEPS, "batch": PROMPT_BATCH, "autocast": "bfloat16 where native (else float32)",
                   "prompt_lr": PROMPT_LR,
                   "head_lr": PROMPT_HEAD_LR,
                   "weight_decay": PROMPT_WD, "prompt_limit": PROMPT_LIMIT, "optimiser": "AdamW, full batch"},
        "zeroshot": {},
        "coop": {"context_tokens": COOP_CONTEXT, "steps": TEXT_STEPS, "lr": COOP_LR, "bias_lr": COOP_BIAS_LR,
                 "optimiser": "AdamW, full batch"},
        "cones": {"steps": TEXT_STEPS, "lr": CONES_LR, "optimiser": "AdamW, full batch"},
    }[method]


class _seeded:
    """Seed torch for the adaptation and run it on the caller's thread count, restoring the RNG state after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.random.set_rng_state(self.state)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_on_features(encoder: str, method: str, class_names: list[str], feats: np.ndarray, y: np.ndarray,
                    multi_label: bool, seed: int) -> dict[str, np.ndarray]:
    """The head arrays of a feature-level method from support features ``(N, D)`` (the evaluation caches them)."""
    if method == "linear":
        return fit_linear(feats, y, multi_label, seed, c=LINEAR_C.get(encoder, 1.0))
    if method == "prototype":
        return fit_prototype(feats, y, multi_label)
    from services.fewshot import text_methods

    return text_methods.fit(method, class_names, feats, y, multi_label, seed)


def _prepared(feats: np.ndarray, center: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Unit features, centred on the support mean first when ``center`` (SimpleShot's CL2N; the mean is kept
    in the head as ``center`` so prediction subtracts the same vector)."""
    x = feats.astype(np.float64)
    if not center:
        return _unit(x), {}
    mu = x.mean(0)
    return _unit(x - mu), {"center": mu}


def fit_linear(feats: np.ndarray, y: np.ndarray, multi_label: bool, seed: int = 0, c: float | None = None,
               center: bool | None = None) -> dict[str, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    c = 1.0 if c is None else c
    x, extra = _prepared(feats, LINEAR_CENTER if center is None else center)
    if multi_label:
        weight, bias = np.zeros((y.shape[1], x.shape[1])), np.zeros(y.shape[1])
        for j in range(y.shape[1]):
            if y[:, j].min() == y[:, j].max():  # every support image positive: nothing to separate
                bias[j] = 4.0
                continue
            clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y[:, j])
            weight[j], bias[j] = clf.coef_[0], clf.intercept_[0]
        return {"weight": weight, "bias": bias, **extra}
    clf = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)
    if clf.coef_.shape[0] == 1:  # two classes: scikit-learn keeps one row; the softmax of ±half is the same model
        return {"weight": np.concatenate([-clf.coef_, clf.coef_]) / 2,
                "bias": np.concatenate([-clf.intercept_, clf.intercept_]) / 2, **extra}
    return {"weight": clf.coef_, "bias": clf.intercept_, **extra}


def fit_prototype(feats: np.ndarray, y: np.ndarray, multi_label: bool,
                  center: bool | None = None) -> dict[str, np.ndarray]:
    x, extra = _prepared(feats, PROTOTYPE_CENTER if center is None else center)
    pos = y.astype(bool) if multi_label else np.eye(int(y.max()) + 1, dtype=bool)[y]
    protos = _unit(np.stack([x[pos[:, j]].mean(0) for j in range(pos.shape[1])]))
    bias = np.zeros(len(protos))
    if multi_label:  # threshold half-way between the support's positive and negative cosines (ranking unchanged)
        cos = x @ protos.T
        for j in range(len(protos)):
            neg = cos[~pos[:, j], j]
            bias[j] = -PROTOTYPE_SCALE * (0.5 * (cos[pos[:, j], j].mean() + neg.mean()) if neg.size else 0.0)
    return {"weight": PROTOTYPE_SCALE * protos, "bias": bias, "prototypes": protos, **extra}


def task_loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """BCE with positives weighted up to balance each class (multi-label), else cross-entropy."""
    if multi_label:
        pos = y.sum(0).clamp(min=1)
        pos_weight = ((len(y) - pos) / pos).clamp(1.0, 20.0)
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
    return F.cross_entropy(logits, y)


def fit_prompt(encoder: str, images: np.ndarray, y: np.ndarray, multi_label: bool, seed: int) -> dict[str, np.ndarray]:
    """Input prompt + linear head through the frozen encoder. The head starts from the linear probe's solution
    (so the prompt refines a working classifier) and the prompt from zeros; the prompt is clamped to
    ±``PROMPT_LIMIT`` (the images span about 1–2 units) so it cannot paint over the image."""
    net = networks.load_encoder(encoder)
    x = torch.from_numpy(images)
    with torch.no_grad():
        start = fit_linear(net(x, torch.zeros_like(x)).numpy(), y, multi_label, seed, c=LINEAR_C.get(encoder, 1.0))
    center = torch.from_numpy(start["center"].astype(np.float32)) if "center" in start else torch.zeros(())
    weight = torch.nn.Parameter(torch.from_numpy(start["weight"].astype(np.float32)))
    bias = torch.nn.Parameter(torch.from_numpy(start["bias"].astype(np.float32)))
    prompt = torch.nn.Parameter(torch.zeros(1, *images.shape[1:]))
    target = torch.from_numpy(y)
    opt = torch.optim.AdamW([{"params": [prompt], "lr": PROMPT_LR, "weight_decay": PROMPT_WD},
                             {"params": [weight, bias], "lr": PROMPT_HEAD_LR, "weight_decay": 0.0}])
    rng = np.random.default_rng(seed)
    for _ in range(PROMPT_STEPS):
        idx = torch.from_numpy(rng.permutation(len(x))[:PROMPT_BATCH])  # mini-batch: the 3-D encoder is costly
        # training passes only (features stay float32); only where bf16 is native: emulated, it is many times slower
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_available()):
            f = net(x[idx], prompt.expand(len(idx), *prompt.shape[1:]))
        f = F.normalize(f.float() - center, dim=1)
        loss = task_loss(f @ weight.T + bias, target[idx], multi_label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            prompt.clamp_(-PROMPT_LIMIT, PROMPT_LIMIT)
    return {"weight": weight.detach().numpy(), "bias": bias.detach().numpy(), "prompt": prompt.detach()[0].numpy(),
            **({"center": start["center"]} if "center" in start else {})}
