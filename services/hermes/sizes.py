"""Sizes and CPU timings of the Hermes networks and data loaders, for docs/hermes.md.

    OMP_NUM_THREADS=1 python -m services.hermes.sizes            # networks only
    OMP_NUM_THREADS=1 python -m services.hermes.sizes --data     # + loading every source, patch sampling
    OMP_NUM_THREADS=1 python -m services.hermes.sizes --onnx     # + ONNX export of CPU_CONFIG, ORT parity

Timings are medians over ``--repeats`` runs with one torch thread, on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from services.hermes.data import PATCH, SPLITS, SyntheticOrganSampler, VolumeSampler, load_source_volume
from services.hermes.losses import hermes_loss
from services.hermes.network import CPU_CONFIG, HermesR, MultiHeadUNet, count_parameters, select_tasks


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3)


def network_sizes(repeats: int = 3, batch: int = 2) -> dict:
    torch.manual_seed(0)
    image = torch.randn(batch, 1, *PATCH)
    tasks = torch.tensor([[0, 1, 2], [12, 13, -1]])[:batch]
    modality = torch.tensor([0, 1])[:batch]
    masks = (torch.rand(batch, tasks.shape[1], *PATCH) > 0.5).float()
    supervised = tasks >= 0
    out: dict = {"patch": list(PATCH), "config": CPU_CONFIG.to_dict(), "train_batch": batch}
    for name, net in (("hermes_r", HermesR()), ("multi_head", MultiHeadUNet())):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def run(net: torch.nn.Module = net) -> tuple[torch.Tensor, torch.Tensor | None]:
            if isinstance(net, HermesR):
                return net(image, tasks, modality)
            return select_tasks(net(image), tasks), None

        def step(run: Callable = run, opt: torch.optim.Optimizer = opt) -> None:
            seg, mod = run()
            loss, _ = hermes_loss(seg, masks, supervised, mod, modality)
            opt.zero_grad()
            loss.backward()
            opt.step()

        net.eval()
        with torch.no_grad():
            one = image[:1]
            forward = _median_s(lambda net=net, one=one: net(one, tasks[:1], modality[:1]) if isinstance(net, HermesR)
                                else net(one), repeats)
        net.train()
        out[name] = {"parameters": count_parameters(net), "forward_s_batch1": forward,
                     "train_step_s": _median_s(step, repeats)}
    return out


def data_sizes() -> dict:
    out: dict = {}
    rng = np.random.default_rng(0)
    for split in SPLITS.values():
        for name in split.train + split.test:
            if name.startswith("synthetic:"):
                start = time.perf_counter()
                sampler = SyntheticOrganSampler()
                out[name] = {"template_s": round(time.perf_counter() - start, 2),
                             "patch_s": _median_s(lambda s=sampler: s.sample(rng), 3)}
                continue
            start = time.perf_counter()
            volume = load_source_volume(name)
            load_s = round(time.perf_counter() - start, 2)
            out[name] = {"load_s": load_s, "grid_shape": list(volume.image.shape), "modality": str(volume.modality),
                         "voxels": {task: int(mask.sum()) for task, mask in volume.masks.items()},
                         "patch_s": _median_s(lambda v=volume: VolumeSampler(v).sample(rng), 3)}
    return out


def onnx_parity(seed: int = 0) -> dict:
    """Export Hermes-R (random weights, CPU_CONFIG) with dynamic batch and task axes; compare onnxruntime
    with torch for two task lists."""
    import onnxruntime as ort

    torch.manual_seed(seed)
    net = HermesR().eval()
    rng = np.random.default_rng(seed)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hermes_r.onnx"
        start = time.perf_counter()
        with torch.no_grad():
            torch.onnx.export(net, (torch.zeros(1, 1, *PATCH), torch.tensor([[0, 1]]), torch.tensor([0])), str(path),
                              input_names=["image", "tasks", "modality"], output_names=["seg", "modality_logits"],
                              dynamic_axes={"image": {0: "batch"}, "tasks": {0: "batch", 1: "tasks"},
                                            "modality": {0: "batch"}, "seg": {0: "batch", 1: "tasks"},
                                            "modality_logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
        out["export_s"] = round(time.perf_counter() - start, 2)
        out["onnx_mb"] = round(path.stat().st_size / 2**20, 2)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for tasks, modality in (([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]], [0]), ([[12, 13, 14]], [1])):
            image = rng.uniform(-1, 1, (1, 1, *PATCH)).astype(np.float32)
            feeds = {"image": image, "tasks": np.array(tasks, np.int64), "modality": np.array(modality, np.int64)}
            seg, mod = session.run(None, feeds)
            with torch.no_grad():
                want_seg, want_mod = net(torch.from_numpy(image), torch.tensor(tasks), torch.tensor(modality))
            out[f"tasks_{len(tasks[0])}"] = {
                "max_abs_seg": float(np.abs(seg - want_seg.numpy()).max()),
                "max_abs_modality": float(np.abs(mod - want_mod.numpy()).max()),
                "ort_s": _median_s(lambda feeds=feeds: session.run(None, feeds), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="store_true", help="also load every source volume and time patches")
    parser.add_argument("--onnx", action="store_true", help="also export CPU_CONFIG and compare onnxruntime")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"torch_threads": torch.get_num_threads(), "networks": network_sizes(args.repeats)}
    if args.data:
        result["data"] = data_sizes()
    if args.onnx:
        result["onnx"] = onnx_parity()
    print(json.dumps(result, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
