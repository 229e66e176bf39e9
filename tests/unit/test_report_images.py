"""Upload decoding (PNG, JPEG, DICOM incl. MONOCHROME1), preprocessing, and the FHIR DiagnosticReport."""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.report.cr import chest_cr_path
from services.report.fhir import diagnostic_report
from services.report.images import ImageError, kind_of, preprocess, read_image


def chest_like(h: int = 200, w: int = 160) -> np.ndarray:
    """Bright mediastinum (more attenuation) between two dark lungs, 0..1."""
    x = np.linspace(-1, 1, w)[None, :].repeat(h, 0)
    image = 0.8 - 0.5 * (np.abs(np.abs(x) - 0.5) < 0.3)
    return image.astype(np.float32)


def png_bytes(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    if mode == "I;16":
        Image.fromarray((array * 65535).astype(np.uint16)).save(buffer, format="PNG")
    else:
        Image.fromarray((array * 255).astype(np.uint8)).save(buffer, format="PNG" if mode == "L" else "JPEG")
    return buffer.getvalue()


def dicom_bytes(array: np.ndarray, photometric: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CR", photometric, 1
    ds.Rows, ds.Columns = array.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    stored = (array * 4000).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (4095 - stored).astype(np.uint16)  # white = low values
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def centre_brighter(x: np.ndarray) -> bool:
    row = x.reshape(x.shape[-2], x.shape[-1])[x.shape[-2] // 2]
    n = len(row)
    return row[n // 2 - 4:n // 2 + 4].mean() > row[n // 4 - 4:n // 4 + 4].mean() + 0.3


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg", "MONOCHROME2", "MONOCHROME1"])
def test_every_format_gives_the_same_picture(kind: str) -> None:
    image = chest_like()
    data = {"png8": lambda: png_bytes(image), "png16": lambda: png_bytes(image, "I;16"),
            "jpeg": lambda: png_bytes(image, "JPEG")}.get(kind, lambda: dicom_bytes(image, kind))()
    array, facts = read_image(data)
    x = preprocess(array)
    assert x.shape == (1, 1, 128, 128) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert centre_brighter(x), f"{kind}: attenuation must be bright (MONOCHROME1 inverted)"
    if kind.startswith("MONO"):
        assert facts["photometric"] == kind


@pytest.mark.parametrize(("data", "unsupported"), [
    (b"GIF89a" + b"\0" * 300, True),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, False),
    (b"\xff\xd8\xff\xe0" + b"garbage" * 20, False),
    (b"\0" * 128 + b"DICM" + b"\x02\x00" * 40, True),  # parses, but holds no pixel data
    ("truncated-dicom", False),
])
def test_bad_uploads_raise_image_errors(data: bytes | str, unsupported: bool) -> None:
    if data == "truncated-dicom":
        data = dicom_bytes(chest_like(64, 64), "MONOCHROME2")[:-3000]
    with pytest.raises(ImageError) as caught:
        read_image(data)
    assert caught.value.unsupported is unsupported


def test_tiny_and_multiframe_inputs_are_refused() -> None:
    with pytest.raises(ImageError, match="smaller than"):
        read_image(png_bytes(np.zeros((8, 8), np.float32)))
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(chest_like(64, 64), "MONOCHROME2")))
    ds.NumberOfFrames = 2
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(ImageError, match="multi-frame"):
        read_image(buffer.getvalue())


def test_real_chest_cr_monochrome1() -> None:
    path = chest_cr_path()
    data = path.read_bytes()
    assert kind_of(data) == "dicom"
    array, facts = read_image(data)
    assert facts["photometric"] == "MONOCHROME1" and facts["modality"] == "CR"
    x = preprocess(array)[0, 0]
    # after inversion the spine/mediastinum (centre column band) is brighter than the lung fields
    assert x[40:90, 58:70].mean() > x[40:90, 25:45].mean() + 0.1
    assert x[40:90, 58:70].mean() > x[40:90, 83:103].mean() + 0.1


def test_fhir_diagnostic_report_validates() -> None:
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    report = diagnostic_report("The heart is enlarged. Small left effusion.",
                               {"cardiomegaly": 0.8, "pleural_effusion": 0.6, "pneumothorax": 0.01},
                               {"name": "report_generate", "version": "3", "sha256": "ab" * 32},
                               indication="dyspnoea", view="PA")
    parsed = DiagnosticReport.model_validate(report)
    assert parsed.status == "preliminary" and parsed.conclusion.startswith("The heart")
    assert len(parsed.result) == 3 and len(parsed.contained) == 4
    observation = next(c for c in report["contained"] if c["id"] == "finding-0")
    assert observation["valueQuantity"]["value"] == 0.8
    assert observation["interpretation"][0]["coding"][0]["code"] == "POS"
    with pytest.raises(ValueError):  # an instant needs a time zone: the validator must catch it
        diagnostic_report("x", {"a": 0.5}, {"name": "m", "version": "1", "sha256": "s"}, issued=datetime(2024, 1, 1))
