"""The Hermes segmentation job as a plain function (issue #21, step 2): a volume + ``tasks`` + modality
→ one mask per requested task and a label map, on the input grid.

    summary = run_hermes_segmentation(Path("ct.nii.gz"), Path("out"), facts, predict,
                                      trained={"CT": [...], "MR": [...]}, tasks="liver,spleen", modality="CT")

``predict(patches, tasks, modality)`` answers (B, T, 64, 64, 64) task logits for (B, 1, 64, 64, 64)
patches on the model grid, task indices (T,) and a modality index: the worker passes Triton
(``hermes_r``), tests ONNX Runtime or the torch network. Inference is `HermesSegmenter`'s own code
(services/hermes/inference.py): the served model is wrapped as a `HermesModel`-like object, so the
preprocessing, the sliding window (64³, half overlap, Gaussian blending), the "modality" task-list
policy (the network always runs every trained task of the volume's modality; the requested channels
are returned, so a task's mask does not depend on what else was asked) and the way back onto the input
grid are the same as in evaluation.

Artifacts: ``mask.nii.gz`` (label map: i + 1 = the i-th requested task where it is the most probable
one above 0.5), ``mask_<task>.nii.gz`` per requested task (uint8 0/1; tasks may overlap, e.g. brain
and grey_matter, which the label map cannot show), ``preview.png``, ``seg.dcm`` for DICOM input and
``summary.json``. Every volume keeps the input's shape, spacing, origin and direction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.job_io import (
    SUMMARY_NAME,
    JobInputError,
    Progress,
    Stopwatch,
    check_input_modality,
    describe_input,
    load_input,
    no_progress,
    write_json,
    write_mask_outputs,
)
from services.common.volume import Volume, write_volume
from services.hermes.data import PATCH
from services.hermes.inference import HermesSegmenter
from services.hermes.request import RequestError, check_tasks, resolve_modality
from services.hermes.tasks import TASK_NAMES, Modality

__all__ = ["BATCH_PATCHES", "ServedHermes", "TaskPredict", "run_hermes_segmentation", "task_mask_name"]

# (B, 1, 64, 64, 64) patches, task indices (T,), modality index → (B, T, 64, 64, 64) logits
TaskPredict = Callable[[np.ndarray, np.ndarray, int], np.ndarray]

BATCH_PATCHES = 2  # HermesSegmenter's batch; the served model takes up to 4 (export_specs.MAX_BATCH)
THRESHOLD = 0.5


def task_mask_name(task: str) -> str:
    return f"mask_{task}.nii.gz"


@dataclass(frozen=True)
class ServedHermes:
    """A served Hermes-R as `HermesSegmenter` sees a `HermesModel`: its trained task indices and a
    predictor factory, the network being behind ``predict``."""

    predict: TaskPredict
    tasks: tuple[int, ...]
    has_priors: bool = True

    @classmethod
    def from_trained(cls, predict: TaskPredict, trained: Mapping[str, Sequence[str]]) -> ServedHermes:
        """``trained``: the manifest's ``preprocessing.trained_tasks`` (modality → task names)."""
        names = {n for names in trained.values() for n in names}
        return cls(predict, tuple(sorted(TASK_NAMES.index(n) for n in names)))

    def predictor(self, tasks: Sequence[int], modality: int) -> Callable[[np.ndarray], np.ndarray]:
        index = np.asarray(list(tasks), np.int64)

        def predict(batch: np.ndarray) -> np.ndarray:
            return self.predict(np.ascontiguousarray(batch, dtype=np.float32), index, modality)

        return predict


def _input_error(error: RequestError) -> JobInputError:
    return JobInputError(error.kind, str(error))


def _write_atomic(volume: Volume, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    write_volume(volume, tmp)
    tmp.replace(path)


def run_hermes_segmentation(
    input_path: Path, out_dir: Path, model: Mapping[str, str], predict: TaskPredict,
    trained: Mapping[str, Sequence[str]], progress: Progress = no_progress, *, tasks: str | Sequence[str],
    modality: str | None = None, series_uid: str | None = None, allow_modality_mismatch: bool = False,
    batch_size: int = BATCH_PATCHES, overlap: float = 0.5, use_modality_prior: bool = True,
    patch_size: tuple[int, int, int] = PATCH,
) -> dict[str, Any]:
    """Masks of the requested ``tasks`` on one volume; writes the artifacts of the module docstring and
    returns the summary. ``modality``: CT or MR, else the DICOM series' Modality (`JobInputError`
    ``modality-required`` for a file without one). Task errors are `JobInputError`s of the kinds in
    services/hermes/request.py; an input that is not the modality fails with ``modality-mismatch``,
    ``not-ct`` or ``not-mr`` unless ``allow_modality_mismatch``. ``model``: name, version, sha256.
    ``patch_size``: the served window (64³); tests of tiny networks pass smaller ones."""
    watch = Stopwatch()
    progress("loading", 0.0)
    original, series = load_input(input_path, series_uid)
    try:
        mod = resolve_modality(modality, series.modality if series is not None else None)
        requested = check_tasks(tasks, mod)
    except RequestError as error:
        raise _input_error(error) from None
    input_check = check_input_modality(original, series, str(mod), allow_modality_mismatch)
    served = ServedHermes.from_trained(predict, trained)
    segmenter = HermesSegmenter(patch_size=patch_size, batch_size=batch_size, overlap=overlap,
                                use_modality_prior=use_modality_prior)
    try:
        run = segmenter.run_list(served, requested, mod)  # type: ignore[arg-type]
    except ValueError as error:  # a task the served checkpoint was not trained for
        raise JobInputError("task-not-served", str(error)) from None
    watch.mark("load")
    progress("preprocessing", 0.05)
    result = segmenter(original, served, [t.name for t in requested], mod,  # type: ignore[arg-type]
                       progress=lambda f: progress("inference", 0.1 + 0.7 * f))
    watch.mark("inference")
    progress("postprocessing", 0.8)
    out_dir.mkdir(parents=True, exist_ok=True)
    structures, label_map, best = [], np.zeros(original.shape, np.uint8), np.full(original.shape, THRESHOLD,
                                                                                   np.float32)
    voxel_ml = float(np.prod(original.spacing)) / 1000.0
    mask_names = []
    for i, task in enumerate(requested):
        probability = result.probability(task).array  # on the input grid
        mask = (probability > THRESHOLD).astype(np.uint8)
        better = probability > best  # the label map: the most probable requested task above the threshold
        label_map[better], best[better] = i + 1, probability[better]
        _write_atomic(original.with_array(mask), out_dir / task_mask_name(task.name))
        mask_names.append(task_mask_name(task.name))
        voxels = int(mask.sum())
        structures.append({"label": i + 1, "name": task.name, "modality": str(task.modality), "voxels": voxels,
                           "volume_ml": round(voxels * voxel_ml, 3)})
        progress("postprocessing", 0.8 + 0.15 * (i + 1) / len(requested))
    for entry in structures:  # where tasks overlap, the label map shows the most probable one
        entry["label_map_voxels"] = int(np.sum(label_map == entry["label"]))
    classes = {0: "background", **{i + 1: t.name for i, t in enumerate(requested)}}
    window = {} if mod == Modality.CT else {"preview_window": None}  # CT: the HU window of every CT job
    artifacts = write_mask_outputs(out_dir, original, original.with_array(label_map), classes, model, series,
                                   **window)
    watch.mark("postprocess")
    summary = {
        "model": dict(model),
        "input": describe_input(input_path, original, series),
        "input_check": input_check,
        "modality": {"value": str(mod), "from": "request" if modality else "dicom",
                     "prior": str(mod) if use_modality_prior else "unknown"},
        "tasks": [t.name for t in requested],
        "run_tasks": [t.name for t in run],
        "task_list_policy": "modality: the network runs every trained task of the modality; the requested "
                            "masks are returned (services/hermes/inference.py)",
        "structures": structures,
        "labels": {str(k): v for k, v in classes.items()},
        "postprocessing": {"threshold": THRESHOLD, "label_map": "most probable requested task above the threshold"},
        "timings_s": watch.timings,
        "artifacts": [*artifacts, *mask_names],
    }
    write_json(out_dir / SUMMARY_NAME, summary)
    progress("done", 1.0)
    return summary

