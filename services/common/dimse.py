"""DICOM network out of a job: C-STORE results to a configured application entity (pynetdicom SCU).

The destination is named by the job (a listener's routing rule) and looked up in the configuration
(`core.settings.DicomNode`): AE title, host and port never come from a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from core.settings import DicomNode
from services.common.dicomweb import DELIVERY_FAILED, PacsError

SUCCESS = 0x0000


def _association(node: DicomNode, calling_ae: str, contexts: Sequence[tuple[str, str]], timeout_s: float) -> Any:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    return ae.associate(node.host, node.port, ae_title=node.ae_title)


def echo(node: DicomNode, calling_ae: str, timeout_s: float = 10.0) -> bool:
    """C-ECHO: does ``node`` accept an association from ``calling_ae`` and answer Success?"""
    assoc = _association(node, calling_ae, [(Verification, "1.2.840.10008.1.2")], timeout_s)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == SUCCESS
    finally:
        assoc.release()


def send_files(node: DicomNode, paths: Sequence[Path], calling_ae: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """C-STORE the files at ``paths`` to ``node`` in one association; raises `PacsError`
    (``delivery-failed``) unless every instance is stored with status Success."""
    datasets = [pydicom.dcmread(path) for path in paths]
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    assoc = _association(node, calling_ae, contexts, timeout_s)
    if not assoc.is_established:
        raise PacsError(DELIVERY_FAILED, f"C-STORE: {node.ae_title} at {node.host}:{node.port} refused or did "
                            "not answer the association")
    stored = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or status.Status != SUCCESS:
                code = f"0x{status.Status:04X}" if status else "no answer"
                raise PacsError(DELIVERY_FAILED, f"C-STORE: {node.ae_title} did not store an instance ({code})")
            stored.append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return {"protocol": "c-store", "ae_title": node.ae_title, "sop_instance_uids": stored}
