"""A new export is a new version; Triton's explicit model control swaps it in without a restart."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.pipeline import export_model
from export.registry import get_spec
from tests.conftest import start_triton

pytestmark = pytest.mark.integration
MODEL = "reference_hutissue"


def _infer(client: grpcclient.InferenceServerClient) -> np.ndarray:
    x = np.linspace(-1000, 1000, 2 * 8 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8, 8)
    tensor = grpcclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(MODEL, [tensor]).as_numpy("logits")


def test_second_version_replaces_first_without_restart(model_repository: Path, tmp_path: Path, run_dir: Path):
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / MODEL, repo / MODEL)
    first = max(int(p.name) for p in (repo / MODEL).iterdir() if p.name.isdigit())
    server = start_triton(run_dir, repo, model_control="explicit", load_models=(MODEL,))
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        assert client.is_model_ready(MODEL, str(first))
        before = _infer(client)

        result = export_model(get_spec(MODEL), repo)
        assert result.version == first + 1
        assert not client.is_model_ready(MODEL, str(result.version)), "explicit mode must not auto-load"

        client.load_model(MODEL)  # re-reads the repository; version policy: latest 1
        assert client.is_model_ready(MODEL, str(result.version))
        assert not client.is_model_ready(MODEL, str(first))
        np.testing.assert_allclose(_infer(client), before, atol=1e-5)
        assert server.process is not None and server.process.poll() is None, "server restarted"

        client.unload_model(MODEL)
        assert not client.is_model_ready(MODEL)
    finally:
        server.stop()
