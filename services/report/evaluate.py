"""Score KiUT and its ablations on the held-out test split (rendered images, real reports).

    python -m services.report.evaluate                  # greedy for all variants, beam 3 for KiUT
    python -m services.report.evaluate --variants kiut --beam 0

Writes ``services/report/checkpoints/kiut/evaluation.json`` and prints a Markdown table for docs/report.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from services.report import data, search, serving
from services.report.findings import ABNORMAL, FINDINGS, clinical_efficacy, label_text, to_vector
from services.report.metrics import caption_scores
from services.report.model import KiUT, knowledge_inputs
from services.report.train import _auroc, checkpoint_dir, load

log = logging.getLogger(__name__)

PUBLISHED = {"BLEU-1": 0.525, "BLEU-2": 0.360, "BLEU-3": 0.251, "BLEU-4": 0.185, "METEOR": 0.242, "ROUGE-L": 0.409}
LABELS = {"kiut": "KiUT (ours, CPU size)", "no_u": "KiUT without U-connection", "plain": "Transformer, no knowledge",
          "retrieval": "Retrieval only (top-1 knowledge-base report)"}


@torch.no_grad()
def encode(model: KiUT, images: np.ndarray, batch: int = 64) -> dict[str, torch.Tensor]:
    parts: list[dict[str, torch.Tensor]] = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s:s + batch].astype(np.float32)[:, None] / 255.0)
        parts.append(model.encode(x))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def step_fn(model: KiUT, enc: dict[str, torch.Tensor]):  # noqa: ANN201
    memory = knowledge_inputs(enc)

    @torch.no_grad()
    def step(tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        idx = torch.from_numpy(rows)
        logits = model.decode(torch.from_numpy(tokens), **{k: v[idx] for k, v in memory.items()})
        return torch.log_softmax(logits[:, -1], dim=-1).numpy()

    return step


def generate(model: KiUT, images: np.ndarray, beam_size: int = 1, batch: int = 64,
             max_tokens: int = serving.MAX_TOKENS) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per image and the finding probabilities (N, F)."""
    enc = encode(model, images)
    step = step_fn(model, enc)
    if beam_size == 1:
        ids: list[list[int]] = []
        for s in range(0, len(images), batch):
            rows = np.arange(s, min(s + batch, len(images)))
            sub = lambda tokens, r, rows=rows: step(tokens, rows[r])  # noqa: E731
            ids.extend(search.greedy(sub, len(rows), max_tokens))
    else:
        ids = [search.beam(step, i, beam_size, max_tokens) for i in range(len(images))]
    return ids, enc["finding_probs"].numpy()


def score(texts: list[str], references: list[str], probs: np.ndarray | None, labels: np.ndarray) -> dict:
    out = {k: round(v, 4) for k, v in caption_scores(texts, references).items()}
    out.update({k: round(v, 4) for k, v in clinical_efficacy(texts, references).items()})
    if probs is not None:
        aucs = [_auroc(probs[:, i], labels[:, i]) for i in range(len(FINDINGS))]
        out["finding_auroc_mean"] = round(float(np.mean([a for a in aucs if a is not None])), 4)
        out["finding_auroc"] = {n: (round(a, 3) if a is not None else None)
                                for n, a in zip(FINDINGS, aucs, strict=True)}
    out["mean_words"] = round(float(np.mean([len(t.split()) for t in texts])), 1)
    out["distinct_texts"] = len(set(texts))  # 1 = the same report for every image
    named = np.stack([to_vector(label_text(t)) for t in texts])[:, 1:]
    gold = np.stack([to_vector(label_text(t)) for t in references])[:, 1:]
    out["images_naming_a_finding"] = int((named.sum(1) > 0).sum())
    out["named_findings"] = {n: {"images": int(named[:, j].sum()),
                                 "in_reference": int((named[:, j] * gold[:, j]).sum())}
                             for j, n in enumerate(ABNORMAL) if named[:, j].any()}
    return out


def image_dependence(model: KiUT, images: np.ndarray, tokens: np.ndarray, labels: np.ndarray) -> dict:
    """Teacher-forced token loss of the test reports with their own images and with the images shuffled
    (a fixed permutation): the difference is how much the words depend on the image (0 = not at all)."""
    from services.report.train import validate

    perm = np.random.default_rng(0).permutation(len(images))
    matched = validate(model, images, tokens, labels)["token_loss"]
    shuffled = validate(model, images[perm], tokens, labels)["token_loss"]
    return {"token_loss": round(matched, 4), "token_loss_shuffled_images": round(shuffled, 4),
            "image_gain": round(shuffled - matched, 4)}


def example_rows(labels: np.ndarray) -> list[int]:
    """Test reports shown as examples: the first normal one and the first with each of cardiomegaly, pleural
    effusion, support devices and emphysema (by their MeSH labels), so that the examples differ in what the
    image shows."""
    rows: list[int] = []
    for name in ("normal", "cardiomegaly", "pleural_effusion", "support_devices", "emphysema"):
        hits = [i for i in np.flatnonzero(labels[:, FINDINGS.index(name)] > 0.5) if i not in rows]
        if hits:
            rows.append(int(hits[0]))
    return rows


def evaluate(variants: list[str], beam_size: int = 3, limit: int | None = None, beam_limit: int | None = None,
             directory: Path | None = None) -> dict:
    """Scores per variant; ``directory`` (one variant only) reads that checkpoint folder instead."""
    if directory is not None and len(variants) != 1:
        raise ValueError("--checkpoint needs exactly one variant")
    torch.set_num_threads(1)
    corpus = data.Corpus.load()
    reports = corpus.splits["test"][:limit]
    images = data.eval_images(corpus.splits["test"], "test")[: len(reports)]
    references = [r.text for r in reports]
    labels = np.stack([r.labels for r in reports])
    results: dict = {"data": f"test split: {len(reports)} Open-i reports, one DRR each (generator "
                             f"v{data.GENERATOR_VERSION}, seeds {data.EVAL_SEEDS}+), never seen in training",
                     "published_kiut_iu_xray": PUBLISHED, "examples": {}}
    for variant in variants:
        folder = directory or checkpoint_dir(variant)
        if not (folder / "model.pt").exists():
            log.warning("no checkpoint for %s in %s; skipped", variant, folder)
            continue
        model, vocab, _ = load(variant, folder)
        started = time.perf_counter()
        ids, probs = generate(model, images)
        texts = [vocab.decode(i) for i in ids]
        results[variant] = score(texts, references, probs, labels) | {
            "decoding": "greedy", "seconds": round(time.perf_counter() - started, 1)}
        results[variant].update(image_dependence(model, images, corpus.tokens("test")[: len(reports)], labels))
        results["examples"][variant] = [
            {"test_row": i, "labels": [n for n, v in zip(FINDINGS, labels[i], strict=True) if v > 0.5],
             "finding_probs": {n: round(float(p), 2) for n, p in zip(FINDINGS, probs[i], strict=True) if p >= 0.3},
             "reference": references[i], "generated": texts[i]} for i in example_rows(labels)]
        log.info("%s greedy: %s", variant, {k: v for k, v in results[variant].items() if k != "finding_auroc"})
        if variant == "kiut":
            sims = torch.nn.functional.normalize(torch.from_numpy(probs), dim=1) @ model.kb_keys.T + model.kb_tiebreak
            top = torch.topk(sims, 1).indices
            retrieved = [vocab.decode(model.kb_tokens[int(i)].tolist()) for i in top[:, 0]]
            results["retrieval"] = score(retrieved, references, None, labels) | {"decoding": "top-1 retrieved report"}
            if beam_size > 1:
                started = time.perf_counter()
                n = len(images) if beam_limit is None else min(beam_limit, len(images))
                ids, _ = generate(model, images[:n], beam_size=beam_size)
                texts = [vocab.decode(i) for i in ids]
                results["kiut_beam"] = score(texts, references[:n], probs[:n], labels[:n]) | {
                    "decoding": f"beam {beam_size}" + ("" if n == len(images) else f" (first {n} test reports)"),
                    "seconds": round(time.perf_counter() - started, 1)}
                log.info("kiut beam: %s", {k: v for k, v in results["kiut_beam"].items() if k != "finding_auroc"})
    return results


def table(results: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "ce_precision", "ce_recall", "ce_f1",
            "finding_auroc_mean", "distinct_texts", "image_gain"]
    lines = ["| model | decoding | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for key, label in (("kiut_beam", "KiUT (ours, CPU size)"), ("kiut", LABELS["kiut"]), ("no_u", LABELS["no_u"]),
                       ("plain", LABELS["plain"]), ("retrieval", LABELS["retrieval"])):
        if key in results:
            r = results[key]
            lines.append(f"| {label} | {r['decoding']} | " + " | ".join(
                f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r[c]) if isinstance(r.get(c), int) else "–"
                for c in cols) + " |")
    p = results["published_kiut_iu_xray"]
    lines.append("| KiUT, published (real IU-Xray images) | beam | " + " | ".join(
        f"{p[c]:.3f}" if c in p else "–" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["kiut", "no_u", "plain"])
    parser.add_argument("--beam", type=int, default=3, help="beam size for KiUT's second pass (0/1: skip)")
    parser.add_argument("--limit", type=int, default=None, help="first N test reports only (smoke runs)")
    parser.add_argument("--beam-limit", type=int, default=None, help="beam search on the first N test reports only")
    parser.add_argument("--out", type=Path, default=serving.checkpoint_dir() / "evaluation.json")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (with one --variants)")
    parser.add_argument("--name", default=None, help="key to store a --checkpoint's results under")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="combine per-variant result files (from parallel runs) into --out instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.merge:
        results = {}
        for path in args.merge:
            part = json.loads(path.read_text())
            examples = results.get("examples", {}) | part.pop("examples", {})
            results |= part
            results["examples"] = examples
    else:
        results = evaluate(args.variants, args.beam, args.limit, args.beam_limit, args.checkpoint)
        if args.name:
            variant = args.variants[0]
            for key in [k for k in list(results) if k == variant or k.startswith(f"{variant}_") or k == "retrieval"]:
                results[key.replace(variant, args.name, 1) if key != "retrieval" else f"{args.name}_retrieval"] = \
                    results.pop(key)
            results["examples"] = {args.name: results["examples"].pop(variant, [])}
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
