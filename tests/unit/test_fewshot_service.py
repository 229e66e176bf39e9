"""The serving side of few-shot tasks without services: support zip + labels.csv checks, image readers by input
kind, the adaptation job (real chest encoder, rendered radiographs) with its typed failures and provenance, and the
registry/export wiring that must follow ``encoders.ENCODERS``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.capabilities import FEWSHOT
from services.common.job_io import JobInputError
from services.fewshot.encoders import ENCODERS
from services.fewshot.job import HEAD_FILE, PROVENANCE_FILE, adaptation_job, check_request
from services.fewshot.support import SupportError, read_image, read_support, sha256, support_zip

SEED0 = 1_700_000  # rendered-radiograph seeds of these tests (outside the report family's training range)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def renders() -> dict[str, list[bytes]]:
    """Three rendered radiographs per class (real phantom CT, findings inserted)."""
    from services.report import drr

    phantom = drr.load_phantom("lung2")
    classes = {"normal": (), "effusion": ("pleural_effusion",), "cardiomegaly": ("cardiomegaly",)}
    return {name: [png(drr.render(phantom, findings, seed=SEED0 + 10 * k + j)) for j in range(3)]
            for k, (name, findings) in enumerate(classes.items())}


def write(tmp_path: Path, files: dict[str, bytes], labels: dict[str, str | list[str]]) -> Path:
    path = tmp_path / "input.zip"
    path.write_bytes(support_zip(files, labels))
    return path


def code_of(call) -> str:  # noqa: ANN001
    with pytest.raises(SupportError) as refused:
        call()
    return refused.value.code


def test_support_zip_is_parsed_and_counted(tmp_path: Path) -> None:
    files = {f"imgs/{c}{j}.png": b"x" for c in "ab" for j in range(2)} | {"extra.png": b"x"}
    path = write(tmp_path, files, {f"imgs/{c}{j}.png": c for c in "ab" for j in range(2)})
    support = read_support(path, ["a", "b"], multi_label=False)
    assert support.shots() == {"a": 2, "b": 2} and support.ignored_files == 1
    assert support.label_array().tolist() == [0, 0, 1, 1]
    # base names are enough when unique; multi-label rows hold several classes, or none
    path = write(tmp_path, {"x.png": b"1", "y.png": b"2", "z.png": b"3"}, {"x.png": ["a", "b"], "y.png": "b",
                                                                           "z.png": []})
    multi = read_support(path, ["a", "b"], multi_label=True)
    assert multi.shots() == {"a": 1, "b": 2} and multi.label_array().tolist() == [[1, 1], [0, 1], [0, 0]]


def test_bad_support_sets_say_what_to_fix(tmp_path: Path) -> None:
    ok = {"a.png": b"1", "b.png": b"2"}
    cases = {
        "class-without-examples": (ok, {"a.png": "a", "b.png": "a"}, ["a", "b"]),
        "labels-name-missing-files": (ok, {"a.png": "a", "b.png": "b", "c.png": "b"}, ["a", "b"]),
        "unknown-label": (ok, {"a.png": "a", "b.png": "c"}, ["a", "b"]),
        "invalid-labels-csv": (ok, {"a.png": "a", "b.png": ["a", "b"]}, ["a", "b"]),  # single-label, two classes
        "empty-support-set": ({}, {}, ["a", "b"]),
        "invalid-class-names": (ok, {"a.png": "a", "b.png": "b"}, ["a", "a"]),
    }
    for code, (files, labels, classes) in cases.items():
        path = write(tmp_path, files, labels)
        assert code_of(lambda p=path, c=classes: read_support(p, c, False)) == code, code
    with pytest.raises(SupportError) as refused:
        read_support(write(tmp_path, ok, {"a.png": "a", "b.png": "b", "gone.png": "a"}), ["a", "b"], False)
    assert "gone.png" in refused.value.detail and refused.value.extra["missing"] == ["gone.png"]
    no_csv = tmp_path / "no_csv.zip"
    import zipfile

    with zipfile.ZipFile(no_csv, "w") as archive:
        archive.writestr("a.png", b"1")
    assert code_of(lambda: read_support(no_csv, ["a", "b"], False)) == "missing-labels-csv"
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"plain text")
    assert code_of(lambda: read_support(not_zip, ["a", "b"], False)) == "corrupt-archive"


def test_images_are_read_by_the_encoders_input_kind(renders: dict[str, list[bytes]], tmp_path: Path) -> None:
    image, spacing = read_image("radiograph", renders["normal"][0])
    assert image.shape == (128, 128) and image.dtype == np.float32 and spacing is None
    npy = io.BytesIO()
    np.save(npy, np.full((8, 16, 16), -500, np.int16))
    patch, spacing = read_image("ct-patch", npy.getvalue())
    assert patch.shape == (8, 16, 16) and float(patch.mean()) == -500 and spacing is None
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray(np.zeros((8, 16, 16), np.int16))
    volume.SetSpacing((0.7, 0.8, 2.5))
    sitk.WriteImage(volume, str(tmp_path / "p.nii.gz"))
    patch, spacing = read_image("ct-patch", (tmp_path / "p.nii.gz").read_bytes())
    assert patch.shape == (8, 16, 16) and spacing == pytest.approx((2.5, 0.8, 0.7))
    assert code_of(lambda: read_image("radiograph", npy.getvalue())) == "wrong-input-kind"
    assert code_of(lambda: read_image("ct-patch", renders["normal"][0])) == "wrong-input-kind"
    assert code_of(lambda: read_image("radiograph", renders["normal"][0][:200])) == "unreadable-image"
    assert code_of(lambda: read_image("radiograph", b"")) == "unreadable-image"


def test_requests_are_checked_against_the_encoder_table() -> None:
    assert check_request("chest", "linear").triton_model == ENCODERS["chest"].triton_model
    assert code_of(lambda: check_request("brain", "linear")) == "unknown-encoder"
    assert code_of(lambda: check_request("chest", "svm")) == "unknown-method"
    text_free = next(name for name, info in ENCODERS.items() if not info.has_text)
    assert code_of(lambda: check_request(text_free, "zeroshot")) == "method-needs-text-encoder"


def test_adaptation_job_stores_head_and_provenance(renders: dict[str, list[bytes]], tmp_path: Path) -> None:
    from services.fewshot.heads import Head, apply
    from services.fewshot.job import prepare

    files = {f"{c}_{j}.png": data for c, images in renders.items() for j, data in enumerate(images)}
    path = write(tmp_path, files, {name: name.split("_")[0] for name in files})
    manifest = {"version": 3, "sha256": "a" * 64, "checkpoint": {"path": "x", "sha256": "b" * 64}}
    params = {"input": path.name, "encoder": "chest", "method": "prototype",
              "class_names": ["normal", "effusion", "cardiomegaly"]}
    head_bytes, provenance = adaptation_job(params, tmp_path, manifest)
    assert (tmp_path / HEAD_FILE).read_bytes() == head_bytes
    assert json.loads((tmp_path / PROVENANCE_FILE).read_text()) == provenance
    assert provenance["encoder"] | {} == {"name": "chest", "model": "fewshot_chest", "version": "3",
                                          "sha256": "a" * 64, "checkpoint_sha256": "b" * 64,
                                          "input_kind": "radiograph", "feature_dim": ENCODERS["chest"].feature_dim}
    assert provenance["shots_per_class"] == {"normal": 3, "effusion": 3, "cardiomegaly": 3}
    assert provenance["shots"] == 3 and provenance["method"] == "prototype"
    assert sorted(f["sha256"] for f in provenance["support_set"]["files"]) == sorted(sha256(d) for d in files.values())
    head = Head.from_bytes(head_bytes)
    assert head.class_names == ["normal", "effusion", "cardiomegaly"] and head.prompt is None
    from services.fewshot.networks import features

    x = np.stack([prepare("chest", *read_image("radiograph", renders["effusion"][0]))])
    scores = apply(head, features("chest", x))
    assert scores.shape == (1, 3) and scores.sum() == pytest.approx(1.0, abs=1e-5)


def test_adaptation_job_failures_are_typed(renders: dict[str, list[bytes]], tmp_path: Path) -> None:
    npy = io.BytesIO()
    np.save(npy, np.zeros((4, 4, 4), np.float32))
    cases = {
        "unreadable-image": {"a.png": renders["normal"][0], "b.png": b"\x89PNG\r\n\x1a\n broken"},
        "wrong-input-kind": {"a.png": renders["normal"][0], "b.npy": npy.getvalue()},
    }
    for code, files in cases.items():
        labels = dict(zip(files, ["normal", "effusion"], strict=True))
        write(tmp_path, files, labels)
        with pytest.raises(JobInputError) as failed:
            adaptation_job({"input": "input.zip", "encoder": "chest", "method": "linear",
                            "class_names": ["normal", "effusion"]}, tmp_path, None)
        assert failed.value.kind == code and list(files)[1] in str(failed.value), code
    with pytest.raises(JobInputError) as failed:
        adaptation_job({"input": "input.zip", "encoder": "nope", "method": "linear", "class_names": ["a", "b"]},
                       tmp_path, None)
    assert failed.value.kind == "unknown-encoder"


def test_a_worker_checkpoint_other_than_the_exported_one_is_refused(tmp_path: Path) -> None:
    from services.fewshot.encoders import chest_checkpoint
    from services.fewshot.job import check_checkpoint

    real = chest_checkpoint() / "model.pt"
    check_checkpoint({"model": "fewshot_chest", "checkpoint": {"path": str(real), "sha256": sha256(real.read_bytes())}})
    check_checkpoint(None)
    with pytest.raises(JobInputError) as refused:
        check_checkpoint({"model": "fewshot_chest", "checkpoint": {"path": str(real), "sha256": "0" * 64}})
    assert refused.value.kind == "encoder-out-of-date" and "medstack export fewshot_chest" in str(refused.value)


def test_registry_and_export_follow_the_encoder_table() -> None:
    from services.fewshot.export_specs import SPECS

    models = [info.triton_model for info in ENCODERS.values()]
    assert list(FEWSHOT.model_choices) == models, "core/capabilities.py FEWSHOT.model_choices must list ENCODERS"
    assert list(SPECS) == models
    spec = SPECS[ENCODERS["chest"].triton_model]()
    assert [t.name for t in spec.inputs] == ["image", "prompt"] and [t.name for t in spec.outputs] == ["features"]
    assert spec.outputs[0].shape == (ENCODERS["chest"].feature_dim,) and spec.checkpoint is not None


def test_gateway_path_imports_no_torch() -> None:
    """The predict route reads the encoder table, preprocesses a radiograph and applies a head: none of that may load
    PyTorch into the gateway process (hundreds of MB per worker)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "import gateway.api.routes.fewshot\n"
            "from services.fewshot import encoders, heads, job, support\n"
            "job.prepare('chest', np.random.default_rng(0).random((64, 80)).astype(np.float32), None)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
