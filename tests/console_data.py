"""Many small studies stored through radloop's own instance store, for the console's tests and
its benchmark (`bench/console.py`). A plain module like `peers`: imported as `console_data`.

Each study is one instance (a 1×1 header-only object), written by
:meth:`radloop.connector.store.InstanceStore.store` exactly as the SCP stores what it receives:
durable file, then the study, series and instance rows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from radloop.connector.store import InstanceStore, describe

MODALITIES = ("CT", "MR", "CR", "US")
AE_TITLES = ("RADLOOP", "RADLOOP_BRAIN", "RADLOOP_CT")


def study_dataset(i: int) -> Dataset:
    """The ``i``-th synthetic study's one instance: patient, accession, date, modality vary with ``i``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = f"Console^Patient{i:05d}"
    ds.PatientID = f"PID{i:05d}"
    ds.AccessionNumber = f"ACC{i:06d}"
    ds.StudyDate = f"2026{1 + i % 12:02d}{1 + i % 28:02d}"
    ds.Modality = MODALITIES[i % len(MODALITIES)]
    ds.SeriesDescription = f"series {i}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def encode(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file (preamble, meta, data set)."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def store_studies(store: InstanceStore, n: int, start: int = 0, threads: int = 1) -> list[Dataset]:
    """Store ``n`` one-instance studies (numbers ``start`` …) through ``store``; their data sets.

    With ``threads`` > 1, several instances are written at once, as concurrent associations do
    (the store's own lock serialises the index rows; the files' fsyncs overlap)."""

    def one(i: int) -> Dataset:
        ds = study_dataset(i)
        info = describe(
            ds, ExplicitVRLittleEndian, called_ae=AE_TITLES[i % len(AE_TITLES)], calling_ae="MODALITY"
        )
        store.store(encode(ds), info, ds)
        return ds

    if threads <= 1:
        return [one(i) for i in range(start, start + n)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(start, start + n)))
