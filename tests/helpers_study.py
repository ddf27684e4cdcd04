"""Series derived from a real one, for study-level tests: a second series of the same study
(another SeriesDescription, inverted contrast) and a "prior" of the same patient (new study,
earlier StudyDate, optionally with every spacing scaled so that its anatomy is larger in mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid


def write_derived_series(src_dir: Path, dst_dir: Path, series_description: str) -> Path:
    """The series of ``src_dir`` as a second series of its study: new series/SOP UIDs, inverted values."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for index, f in enumerate(sorted(src_dir.iterdir())):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesDescription = series_description
        ds.SeriesNumber = int(ds.get("SeriesNumber", 1) or 1) + 100
        pixels = ds.pixel_array
        ds.PixelData = (pixels.max() - pixels).astype(pixels.dtype).tobytes()
        ds.save_as(dst_dir / f"{index:04d}.dcm")
    return dst_dir


def write_prior(src_dir: Path, dst_dir: Path, study_date: str, scale: float = 1.0) -> Path:
    """The series of ``src_dir`` as the same patient's earlier study: new study/series/SOP/frame UIDs,
    ``study_date``, and PixelSpacing, slice positions and thickness multiplied by ``scale``."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for index, f in enumerate(sorted(src_dir.iterdir())):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            if keyword in ds:
                setattr(ds, keyword, study_date)
        ds.AccessionNumber = f"PRIOR{study_date}"
        if scale != 1.0:
            ds.PixelSpacing = [f"{float(v) * scale:.6g}" for v in ds.PixelSpacing]
            ds.ImagePositionPatient = [f"{float(v) * scale:.6g}" for v in ds.ImagePositionPatient]
            for keyword in ("SliceThickness", "SpacingBetweenSlices"):
                if keyword in ds:
                    setattr(ds, keyword, f"{float(ds[keyword].value) * scale:.6g}")
        ds.save_as(dst_dir / f"{index:04d}.dcm")
    return dst_dir


def volume_ratio(scale: float) -> float:
    """How much larger (in mL) the same voxels are when every spacing is multiplied by ``scale``."""
    return float(np.power(scale, 3))
