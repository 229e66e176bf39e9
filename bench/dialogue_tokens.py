"""Dialogue decoding speed: tokens/s through Triton (``dialogue_generate``, BLS over the ONNX generator with
a KV cache) vs ``transformers`` eager ``generate`` with the same merged weights, on the same prompts, in one run.

    python -m bench.dialogue_tokens --prompts 8 --max-new-tokens 48

One run starts an embedded Triton over the model repository. Prompts are test-split consultation turns;
Triton builds each prompt itself (instruction, retrieval) and reports it, and the eager run decodes that
exact prompt, greedily, to the same token limit. Both clocks include the prompt's prefill; Triton's
also includes the instruction encoder calls. Prints a Markdown section for docs/dialogue.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient

from core.settings import settings
from core.triton import TritonServer, prepare_runtime

MODEL = "dialogue_generate"


def _hf_with_merged_lora() -> torch.nn.Module:
    """transformers' LlamaForCausalLM from the GGUF, with the served (merged) weights copied in."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from services.common.datasets import fetch
    from services.dialogue import lm
    from services.dialogue.train_generator import ADAPTERS

    hf = AutoModelForCausalLM.from_pretrained(fetch("smollm2_135m"), gguf_file=lm.GGUF_FILE, dtype=torch.float32)
    merged = lm.merged_generator(ADAPTERS[True]).state_dict()
    state = hf.state_dict()
    for key, value in merged.items():
        name = key.replace("_proj", "_proj")
        parts = name.split(".")
        if parts[0] == "layers":
            sub = "self_attn" if parts[2] in ("q_proj", "k_proj", "v_proj", "o_proj") else (
                "mlp" if parts[2].endswith("_proj") else None)
            name = ".".join(["model", *parts[:2], *([sub] if sub else []), *parts[2:]])
        else:
            name = "model." + name
        if name in state:
            state[name].copy_(value)
    return hf.eval()


def _triton_turn(client: grpcclient.InferenceServerClient, history: list[dict], max_new: int) -> dict:
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    payload = json.dumps({"messages": history, "max_new_tokens": max_new}).encode()
    tensor = grpcclient.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([payload], dtype=np.object_))
    started = time.perf_counter()
    client.async_stream_infer(MODEL, [tensor])
    first, meta, text = None, None, ""
    while True:
        result, error = results.get(timeout=300)
        if error is not None:
            raise RuntimeError(error)
        piece = result.as_numpy("text")[0].decode()
        raw = result.as_numpy("meta")[0]
        info = json.loads(raw) if raw else None
        if piece and first is None:
            first = time.perf_counter() - started
        text += piece
        if info and not info.get("done"):
            meta = info
        if info and info.get("done"):
            elapsed = time.perf_counter() - started
            client.stop_stream()
            return {"tokens": info["tokens"], "seconds": elapsed, "first_token_s": first, "meta": meta, "text": text}


def run(prompts: int, max_new: int, threads: int) -> str:
    from services.dialogue import core, corpus, lm
    from services.dialogue.train_generator import corpus_data
    from services.dialogue.train_instruction import sample

    torch.set_num_threads(threads)
    turns = sample(corpus.examples(corpus_data(), "test"), prompts, 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dialogue-"))
    runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
    from medstack.stack import free_port

    server = TritonServer(runtime, settings.model_repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=tmp / "triton.log")
    server.start()
    try:
        server.wait_ready(timeout_s=180)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        history0 = [{"role": "user" if t["role"] == "patient" else "assistant", "content": t["text"]}
                    for t in turns[0]["history"]]
        _triton_turn(client, history0, 4)  # warm-up
        served = []
        for t in turns:
            history = [{"role": "user" if u["role"] == "patient" else "assistant", "content": u["text"]}
                       for u in t["history"]]
            served.append((t, _triton_turn(client, history, max_new)))
    finally:
        server.stop()

    hf = _hf_with_merged_lora()
    tok = lm.tokenizer()
    end = tok.token_to_id(lm.END)
    eager, same = [], 0
    with torch.no_grad():
        hf.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)  # warm-up
        for t, s in served:
            prompt = core.build_prompt(t["history"], s["meta"]["instruction"], s["meta"]["knowledge"])
            ids = torch.tensor([tok.encode(prompt).ids])
            started = time.perf_counter()
            out = hf.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=end, pad_token_id=end)
            elapsed = time.perf_counter() - started
            new = [i for i in out[0, ids.shape[1]:].tolist() if i != end]
            eager.append({"tokens": len(new), "seconds": elapsed})
            same += tok.decode(new).strip() == s["text"].strip()
    tri_tps = sum(s["tokens"] for _, s in served) / sum(s["seconds"] for _, s in served)
    eag_tps = sum(e["tokens"] for e in eager) / sum(e["seconds"] for e in eager)
    ttft = float(np.median([s["first_token_s"] for _, s in served if s["first_token_s"] is not None]))
    return (
        "## Dialogue decoding: Triton vs transformers eager\n\n"
        f"`python -m bench.dialogue_tokens --prompts {prompts} --max-new-tokens {max_new} --threads {threads}` on "
        f"{platform.machine()} ({os.cpu_count()} CPUs, shared), {prompts} test-split prompts, greedy, "
        f"≤ {max_new} new tokens.\n\n"
        "| path | tokens | seconds | tokens/s |\n|---|---|---|---|\n"
        f"| Triton `dialogue_generate` (BLS + ONNX Runtime, KV cache) | {sum(s['tokens'] for _, s in served)} | "
        f"{sum(s['seconds'] for _, s in served):.1f} | {tri_tps:.1f} |\n"
        f"| transformers eager `generate` ({threads} threads) | {sum(e['tokens'] for e in eager)} | "
        f"{sum(e['seconds'] for e in eager):.1f} | {eag_tps:.1f} |\n\n"
        f"Ratio Triton / eager: **{tri_tps / eag_tps:.2f}×**. Median time to first token through Triton: "
        f"{ttft:.2f} s. Identical text from both paths on {same}/{len(served)} prompts.\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(run(args.prompts, args.max_new_tokens, args.threads))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
