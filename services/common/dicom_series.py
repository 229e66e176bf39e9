"""DICOM series in and out: a zip of slices → ``Volume`` with patient geometry, and back.

Reading picks one CT/MR series (the one asked for, else the one with the most slices), sorts the
slices along the slice normal by Image Position (Patient), and refuses what cannot be stacked
into one regular grid: gaps, uneven spacing, duplicate positions, gantry tilt, mixed orientations.
The zip is read member by member in memory, never extracted, with limits against bombs.
"""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from services.common.volume import Volume, VolumeError

MAX_MEMBERS = 5000
MAX_UNCOMPRESSED = 8 << 30  # bytes over all members
MAX_RATIO = 200  # uncompressed / compressed, per member
IMAGE_MODALITIES = ("CT", "MR")
SPACING_TOLERANCE = 0.01  # relative deviation of slice steps that counts as uneven


class DicomSeriesError(VolumeError):
    """The upload does not hold one regular DICOM series we can stack."""


@dataclass
class DicomSeries:
    volume: Volume
    datasets: list[Dataset]  # sorted like the volume's z axis, pixel data kept for DICOM SEG
    series_uid: str
    modality: str


def _members(zip_path: Path) -> list[zipfile.ZipInfo]:
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise DicomSeriesError("the upload is not a readable zip file; zip the series' .dcm files again") from None
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
    if len(infos) > MAX_MEMBERS:
        raise DicomSeriesError(f"zip holds {len(infos)} files; at most {MAX_MEMBERS} are accepted")
    if sum(i.file_size for i in infos) > MAX_UNCOMPRESSED:
        raise DicomSeriesError(f"zip expands to more than {MAX_UNCOMPRESSED >> 30} GiB; send one series")
    for info in infos:
        if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
            ratio = info.file_size // info.compress_size
            raise DicomSeriesError(f"zip member compresses {ratio}:1; refused as a zip bomb")
    return infos


def _read_datasets(zip_path: Path) -> list[Dataset]:
    datasets = []
    with zipfile.ZipFile(zip_path) as archive:
        for info in _members(zip_path):
            with archive.open(info) as member:
                data = member.read(info.file_size + 1)
            if len(data) > info.file_size:
                raise DicomSeriesError("zip member is larger than its header says; refused")
            try:
                ds = pydicom.dcmread(io.BytesIO(data))
            except (pydicom.errors.InvalidDicomError, EOFError, ValueError):
                continue  # DICOMDIR-less extras (README, thumbnails) are skipped
            if "PixelData" in ds and getattr(ds, "Modality", "") in IMAGE_MODALITIES:
                datasets.append(ds)
    if not datasets:
        raise DicomSeriesError("the zip holds no CT or MR DICOM images; zip the .dcm files of one series")
    return datasets


def _choose_series(datasets: list[Dataset], series_uid: str | None) -> list[Dataset]:
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        by_series[str(ds.SeriesInstanceUID)].append(ds)
    if series_uid is not None:
        if series_uid not in by_series:
            raise DicomSeriesError(f"series {series_uid} is not in the zip; it holds {', '.join(sorted(by_series))}")
        return by_series[series_uid]
    return max(by_series.values(), key=len)


def _geometry(slices: list[Dataset]) -> tuple[list[Dataset], np.ndarray, float]:
    """Sort along the normal; return sorted slices, direction (3×3, columns x, y, z), slice step."""
    orientations = {tuple(round(float(v), 4) for v in ds.ImageOrientationPatient) for ds in slices}
    if len(orientations) != 1:
        raise DicomSeriesError("the series mixes slice orientations; send a series acquired in one orientation")
    if len({(int(ds.Rows), int(ds.Columns)) for ds in slices}) != 1:
        raise DicomSeriesError("slices differ in size (Rows/Columns); send one series")
    iop = np.array(next(iter(orientations)), dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    order = np.argsort(positions @ normal)
    slices, positions = [slices[i] for i in order], positions[order]
    if len(slices) < 2:
        raise DicomSeriesError("the series has a single slice; a 3D volume needs the whole series")
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    if np.any(along < 1e-3):
        raise DicomSeriesError("two slices share a position (duplicate or mixed series); send one series")
    step = float(np.median(along))
    if np.max(np.abs(along - step)) > SPACING_TOLERANCE * step:
        raise DicomSeriesError(
            f"slice spacing is uneven ({along.min():.3f}–{along.max():.3f} mm): missing slices or a gap; "
            "send the complete series"
        )
    sideways = np.linalg.norm(steps - np.outer(along, normal), axis=1)
    if np.max(sideways) > 1e-3 * step + 1e-3:
        raise DicomSeriesError("slices are offset sideways (gantry tilt); resample to an orthogonal grid first")
    return slices, np.stack([row, col, normal], axis=1), step


def read_dicom_zip(zip_path: str | Path, series_uid: str | None = None) -> DicomSeries:
    slices = _choose_series(_read_datasets(Path(zip_path)), series_uid)
    slices, direction, step = _geometry(slices)
    try:
        planes = [
            ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1))
            + float(getattr(ds, "RescaleIntercept", 0))
            for ds in slices
        ]
    except Exception as error:  # missing codec, truncated pixel data: tell the user which
        raise DicomSeriesError(f"pixel data could not be decoded ({error}); send uncompressed DICOM") from None
    array = np.stack(planes)
    if np.all(array == np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    row_mm, col_mm = (float(v) for v in slices[0].PixelSpacing)  # row spacing (y), column spacing (x)
    volume = Volume(
        array=array,
        spacing=(col_mm, row_mm, step),
        origin=tuple(float(v) for v in slices[0].ImagePositionPatient),
        direction=tuple(direction.ravel()),
    )
    return DicomSeries(volume, slices, str(slices[0].SeriesInstanceUID), str(slices[0].Modality))


def write_ct_series(volume: Volume, out_dir: Path, series_description: str = "MedStack test series") -> list[Path]:
    """Write ``volume`` (HU) as a CT series of uncompressed slices, one file per z index.

    For tests and demos: real voxels in a real series with correct Image Position/Orientation.
    Patient attributes are placeholders, never real people.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    direction = np.array(volume.direction).reshape(3, 3)
    origin = np.array(volume.origin)
    sx, sy, sz = volume.spacing
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.now()
    paths = []
    for k, plane in enumerate(volume.array):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "TEST-0001", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "MedStack", 1, k + 1
        ds.SeriesDescription = series_description
        ds.ImagePositionPatient = [float(v) for v in origin + k * sz * direction[:, 2]]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(plane.astype(np.int16)).tobytes()
        path = out_dir / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_files(paths: list[Path], zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            archive.write(path, arcname=path.name)
    return zip_path
