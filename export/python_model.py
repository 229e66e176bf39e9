"""Write a python-backend model (``PythonModelSpec``) into the model repository.

    export_python_model(get_spec("report_generate"), Path("model_repository"))

writes ``<repo>/<name>/<version>/{model.py, extra files, manifest.json}`` and the same config
under every flavour's file name, so ``--model-config-name`` finds it on any server.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from export.manifest import git_provenance, sha256_file, versions, write_manifest
from export.pipeline import ExportResult
from export.spec import PythonModelSpec
from export.triton_config import CONFIG_FILES, render_python_config

log = logging.getLogger(__name__)


def export_python_model(spec: PythonModelSpec, repository: Path) -> ExportResult:
    model_dir = repository / spec.name
    version = (versions(model_dir) or [0])[-1] + 1
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True)
    shutil.copy2(spec.model_file, version_dir / "model.py")
    extra = spec.files()
    for name, source in extra.items():
        shutil.copy2(source, version_dir / name)
    config = render_python_config(spec)
    for file_name in CONFIG_FILES.values():
        path = model_dir / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config)

    manifest = {
        "model": spec.name,
        "version": version,
        "description": spec.description,
        "backend": "python",
        "sha256": sha256_file(version_dir / "model.py"),
        "files": {name: sha256_file(version_dir / name) for name in sorted(extra)},
        "composes": list(spec.composes),
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in spec.outputs],
        "training": spec.training,
        "preprocessing": spec.preprocessing(),
        "validation_metrics": spec.validation_metrics(),
        **git_provenance(),
    }
    write_manifest(version_dir, manifest)
    log.info("wrote python model %s version %d", spec.name, version)
    return ExportResult(spec.name, version, version_dir, manifest)
