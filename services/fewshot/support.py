"""What a client sends to a few-shot task: the support set (a zip with ``labels.csv``) and single images.

Support zip: image files anywhere in the zip plus one ``labels.csv`` with the header ``file,label``:

* ``file``: the member's path in the zip (or just its file name when that is unique);
* ``label``: one class name; for a multi-label task, zero or more class names separated by ``;``
  (an empty cell: an image showing none of the classes, a negative example for every class).

One row per image; images the CSV does not name are ignored (and counted). Every class of the task
needs at least one image (one positive image, for multi-label). Checked here, before any image is
decoded, so the gateway answers a bad CSV with 422 at once; the worker checks again and then decodes.

Images (``read_image``), by the encoder's ``input_kind``:

* ``"radiograph"``: PNG, JPEG or single-frame DICOM (``services/report/images.py``: MONOCHROME1 inverted);
* ``"ct-patch"``: a HU patch as ``.npy`` (no pickles) or NIfTI (``.nii``/``.nii.gz``, read by SimpleITK).

A file of the other kind is ``wrong-input-kind``; a damaged one ``unreadable-image``. NumPy, Pillow,
pydicom and SimpleITK only (no torch): the gateway imports this module.
"""

from __future__ import annotations

import csv
import hashlib
import io
import tempfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS_FILE = "labels.csv"
LABEL_SEPARATOR = ";"
MAX_CLASSES = 50
MAX_SUPPORT_IMAGES = 1000
MAX_IMAGE_BYTES = 64 << 20
MAX_LISTED = 20  # problems named in one answer


class SupportError(ValueError):
    """A support set or image that cannot be used. ``code`` is the problem type (``class-without-examples``,
    ``labels-name-missing-files``, ``unreadable-image`` …); ``extra`` goes into the problem/job error."""

    def __init__(self, code: str, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.code, self.detail, self.extra = code, detail, extra


@dataclass(frozen=True)
class SupportItem:
    file: str  # as written in labels.csv
    member: str  # the zip member it names
    labels: tuple[str, ...]


@dataclass(frozen=True)
class SupportSet:
    class_names: tuple[str, ...]
    multi_label: bool
    items: tuple[SupportItem, ...]
    ignored_files: int

    def shots(self) -> dict[str, int]:
        """Images per class (positives, for multi-label), in class order."""
        counts = Counter(label for item in self.items for label in item.labels)
        return {name: counts.get(name, 0) for name in self.class_names}

    def label_array(self) -> np.ndarray:
        """``(N,)`` int64 class indices, or ``(N, C)`` float32 0/1 for a multi-label task (adapt's ``labels``)."""
        index = {name: k for k, name in enumerate(self.class_names)}
        if not self.multi_label:
            return np.array([index[item.labels[0]] for item in self.items], dtype=np.int64)
        out = np.zeros((len(self.items), len(self.class_names)), dtype=np.float32)
        for row, item in enumerate(self.items):
            out[row, [index[label] for label in item.labels]] = 1.0
        return out


def check_class_names(class_names: list[str], multi_label: bool = False) -> tuple[str, ...]:
    """Class names as the task keeps them: 2 (multi-label: 1) … MAX_CLASSES distinct, non-empty, no separators."""
    names = tuple(name.strip() for name in class_names)
    problems = []
    fewest = 1 if multi_label else 2
    if len(names) < fewest or len(names) > MAX_CLASSES:
        problems.append(f"name {fewest} to {MAX_CLASSES} classes, got {len(names)}")
    if any(not name or len(name) > 64 for name in names):
        problems.append("class names must be 1–64 characters")
    if any(sep in name for name in names for sep in (LABEL_SEPARATOR, ",")):
        problems.append(f"class names must not contain ',' or '{LABEL_SEPARATOR}'")
    repeated = sorted(name for name, n in Counter(names).items() if n > 1)
    if repeated:
        problems.append(f"class names repeat: {repeated}")
    if problems:
        raise SupportError("invalid-class-names", "; ".join(problems))
    return names


def _members(archive: zipfile.ZipFile) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Files of the zip (macOS resource forks skipped) by full path and by base name."""
    full, by_base = {}, {}
    for name in archive.namelist():
        if name.endswith("/") or name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith("._"):
            continue
        full[name] = name
        by_base.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    return full, by_base


def _labels_csv(archive: zipfile.ZipFile, by_base: dict[str, list[str]]) -> list[dict[str, str]]:
    found = by_base.get(LABELS_FILE, [])
    if not found:
        raise SupportError("missing-labels-csv", f"the zip has no {LABELS_FILE}; add one with the header "
                           f"'file,label' and one row per image")
    if len(found) > 1:
        raise SupportError("invalid-labels-csv", f"the zip holds {len(found)} files named {LABELS_FILE}; keep one")
    try:
        text = archive.read(found[0]).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SupportError("invalid-labels-csv", f"{LABELS_FILE} is not UTF-8 text") from error
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "file" not in header or "label" not in header:
        raise SupportError("invalid-labels-csv", f"{LABELS_FILE} needs the header 'file,label' (found "
                           f"{','.join(header) or 'nothing'})")
    return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]


def read_support(zip_path: Path, class_names: list[str] | tuple[str, ...], multi_label: bool) -> SupportSet:
    """Parse and check the support zip at ``zip_path`` against the task's classes; images are not decoded."""
    names = check_class_names(list(class_names), multi_label)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise SupportError("corrupt-archive", "the support set is not a readable zip file") from error
    with archive:
        full, by_base = _members(archive)
        rows = _labels_csv(archive, by_base)
    images = [m for m in full if m.rsplit("/", 1)[-1] != LABELS_FILE]
    if not images:
        raise SupportError("empty-support-set", "the zip holds no images, only labels.csv; add the labelled images")
    if not rows:
        raise SupportError("empty-support-set", f"{LABELS_FILE} names no images; add one row per image")
    if len(rows) > MAX_SUPPORT_IMAGES:
        raise SupportError("support-set-too-large", f"{len(rows)} images; a task takes at most {MAX_SUPPORT_IMAGES}")
    items, missing, ambiguous, unknown, multiple = [], [], [], set(), []
    seen: set[str] = set()
    for row in rows:
        file = row.get("file", "")
        member = full.get(file.lstrip("./")) or (by_base.get(file)[0] if len(by_base.get(file, [])) == 1 else None)
        if member is None:
            (ambiguous if len(by_base.get(file, [])) > 1 else missing).append(file or "(empty)")
            continue
        if member in seen:
            raise SupportError("invalid-labels-csv", f"{LABELS_FILE} lists {file} twice; one row per image "
                               f"(separate several classes with '{LABEL_SEPARATOR}' in a multi-label task)")
        seen.add(member)
        labels = tuple(dict.fromkeys(v.strip() for v in row.get("label", "").split(LABEL_SEPARATOR) if v.strip()))
        unknown.update(label for label in labels if label not in names)
        if not multi_label and len(labels) != 1:
            multiple.append(file)
        items.append(SupportItem(file, member, labels))
    if missing:
        raise SupportError("labels-name-missing-files", f"{LABELS_FILE} names {len(missing)} file(s) the zip does not "
                           f"hold: {', '.join(missing[:MAX_LISTED])}; add them or remove their rows",
                           missing=missing[:100])
    if ambiguous:
        raise SupportError("invalid-labels-csv", "file names match several members: "
                           f"{', '.join(ambiguous[:MAX_LISTED])}; write the path inside the zip")
    if unknown:
        raise SupportError("unknown-label", f"{LABELS_FILE} uses labels that are not classes of the task: "
                           f"{sorted(unknown)[:MAX_LISTED]}; the classes are {list(names)}", labels=sorted(unknown))
    if multiple:
        raise SupportError("invalid-labels-csv", f"a single-label task needs exactly one class per image; these rows "
                           f"have none or several: {', '.join(multiple[:MAX_LISTED])} (or send multi_label=true)")
    support = SupportSet(names, multi_label, tuple(items), len(images) - len(items))
    empty = [name for name, n in support.shots().items() if n == 0]
    if empty:
        raise SupportError("class-without-examples", f"no {'positive ' if multi_label else ''}example for the "
                           f"class(es) {empty}; label at least one image of each class", classes=empty)
    return support


def support_zip(files: dict[str, bytes], labels: dict[str, str | list[str]]) -> bytes:
    """A support zip in the format above: ``files`` (name → bytes) and ``labels`` (name → class, or classes)."""
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["file", "label"])
    for name, label in labels.items():
        writer.writerow([name, label if isinstance(label, str) else LABEL_SEPARATOR.join(label)])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(LABELS_FILE, rows.getvalue())
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def read_member(zip_path: Path, member: str) -> bytes:
    with zipfile.ZipFile(zip_path) as archive:
        if archive.getinfo(member).file_size > MAX_IMAGE_BYTES:
            raise SupportError("unreadable-image", f"{member} is larger than {MAX_IMAGE_BYTES >> 20} MiB")
        return archive.read(member)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- single images -------------------------------------------------------------------------------


def kind_of(data: bytes) -> str:
    """``radiograph``-type (png, jpeg, dicom), ``ct-patch``-type (npy, nifti, gzip) or ``unknown``, from the bytes."""
    from services.report.images import kind_of as image_kind

    kind = image_kind(data)
    if kind != "unknown":
        return kind
    if data[:6] == b"\x93NUMPY":
        return "npy"
    if data[:2] == b"\x1f\x8b":
        return "nifti.gz"
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00"):
        return "nifti"
    return "unknown"


RADIOGRAPH_KINDS = ("png", "jpeg", "dicom")
CT_PATCH_KINDS = ("npy", "nifti", "nifti.gz")


def read_image(input_kind: str, data: bytes, name: str = "the image") -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Decode ``data`` for an encoder taking ``input_kind``: a ``(H, W)`` radiograph (larger = more attenuation),
    or a HU patch ``(z, y, x)`` as float32 with its voxel spacing in mm (z, y, x) where the file says it (NIfTI;
    a ``.npy`` has none). Raises SupportError ``wrong-input-kind`` / ``unreadable-image``."""
    if not data:
        raise SupportError("unreadable-image", f"{name} is empty")
    kind = kind_of(data)
    wanted = RADIOGRAPH_KINDS if input_kind == "radiograph" else CT_PATCH_KINDS
    if kind not in wanted:
        what = "a PNG, JPEG or DICOM radiograph" if input_kind == "radiograph" else "a HU patch as .npy or NIfTI"
        found = "an unknown format" if kind == "unknown" else f"a {kind.upper()} file"
        raise SupportError("wrong-input-kind", f"{name} is {found}; this encoder takes {what}",
                           input_kind=input_kind)
    if input_kind == "radiograph":
        return _radiograph(data, name), None
    return _ct_patch(data, kind, name)


def _radiograph(data: bytes, name: str) -> np.ndarray:
    from services.report.images import ImageError
    from services.report.images import read_image as read_radiograph

    try:
        image, _ = read_radiograph(data)
    except ImageError as error:
        raise SupportError("unreadable-image", f"{name}: {error}") from error
    return np.asarray(image, dtype=np.float32)


def _ct_patch(data: bytes, kind: str, name: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    spacing = None
    try:
        if kind == "npy":
            array = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            array, spacing = _nifti(_gunzip(data, name) if kind == "nifti.gz" else data)
    except SupportError:
        raise
    except Exception as error:  # decoders raise many types on damaged input; all mean "unreadable"  # noqa: BLE001
        raise SupportError("unreadable-image",
                           f"{name}: not a readable {kind} patch ({type(error).__name__})") from error
    if array.dtype.kind not in "fiub" or array.ndim != 3 or min(array.shape) < 1:
        raise SupportError("unreadable-image", f"{name}: a HU patch must be a 3-D (z, y, x) numeric array, got "
                           f"{array.dtype} {array.shape}")
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise SupportError("unreadable-image", f"{name}: the patch holds NaN or infinity")
    return array, spacing


def _gunzip(data: bytes, name: str) -> bytes:
    """Inflate at most MAX_IMAGE_BYTES (a gzip bomb stops there)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, MAX_IMAGE_BYTES + 1)
    if len(out) > MAX_IMAGE_BYTES:
        raise SupportError("unreadable-image", f"{name} inflates past {MAX_IMAGE_BYTES >> 20} MiB")
    return out


def _nifti(raw: bytes) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxels ``(z, y, x)`` and spacing (mm, z, y, x) of a NIfTI file's bytes; SimpleITK needs a file."""
    import SimpleITK as sitk

    with tempfile.NamedTemporaryFile(suffix=".nii") as handle:
        handle.write(raw)
        handle.flush()
        image = sitk.ReadImage(handle.name)
    return sitk.GetArrayFromImage(image), tuple(float(v) for v in reversed(image.GetSpacing()))
