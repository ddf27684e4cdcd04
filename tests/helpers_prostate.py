"""A synthetic axial T2-weighted male pelvis, as an array and as a DICOM MR series.

No real prostate MR is in the test data (``../shared/data``), so the prostate tests and the
pipeline benchmark use this phantom: body fat (bright on T2), obturator muscles, pelvic bones,
rectum, bladder, and a prostate with a darker capsule, an intermediate transition zone and a
bright peripheral zone. It exercises every step of the TAPS arithmetic; it is not anatomy the
network was trained on, so its prostate probability is low (see the tests for the thresholds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

PELVIS_SHAPE = (16, 100, 100)
"""(frames, rows, columns): after TAPS' resampling and crop it fits one 128 × 128 × 32 window."""
PELVIS_SPACING = (3.6, 0.9, 0.9)
"""mm between slices, rows and columns (resampled to 3.0 × 0.8 × 0.8 mm by the pipeline)."""


def pelvis(
    shape: tuple[int, int, int] = PELVIS_SHAPE,
    spacing: tuple[float, float, float] = PELVIS_SPACING,
    seed: int = 0,
) -> np.ndarray:
    """A (frames, rows, columns) float32 T2-like pelvis; frames go to the head, rows to posterior."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    img = np.zeros(shape)
    body = (y / 47.0) ** 2 + (x / 50.0) ** 2 <= 1.0  # touches every edge: TAPS' crop keeps it all
    img[body] = 330.0
    img[body & ((((np.abs(x) - 27) / 8.0) ** 2 + ((y + 2) / 22.0) ** 2) <= 1.0)] = 90.0
    img[body & ((((np.abs(x) - 38) / 4.0) ** 2 + (y / 16.0) ** 2) <= 1.0)] = 200.0
    img[((x / 11.0) ** 2 + ((y - 27) / 7.0) ** 2) <= 1.0] = 60.0
    gland = (z / 16.0) ** 2 + (y / 14.0) ** 2 + (x / 19.0) ** 2
    img[gland <= 1.15] = 70.0
    img[gland <= 1.0] = 150.0
    img[(gland <= 1.0) & (y > 3) & (gland > 0.35)] = 280.0
    img[body & (((x / 22.0) ** 2 + ((y + 20) / 13.0) ** 2 + ((z - 26) / 18.0) ** 2) <= 1.0)] = 600.0
    img = ndimage.gaussian_filter(img, (0.3, 1.0, 1.0))
    img = img + np.where(body, rng.normal(0, 12, shape), 0.0)
    return np.clip(img, 0, None).astype(np.float32)


def pelvis_affine(
    shape: tuple[int, int, int] = PELVIS_SHAPE, spacing: tuple[float, float, float] = PELVIS_SPACING
) -> np.ndarray:
    """LPS affine of an axial stack: columns to the patient's left, rows to posterior, frames to head."""
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, spacing[2]], [0, spacing[1], 0], [spacing[0], 0, 0]])
    affine[:3, 3] = [-(shape[2] - 1) * spacing[2] / 2, -(shape[1] - 1) * spacing[1] / 2, -30.0]
    return affine


def write_mr_series(
    dst_dir: Path,
    array: np.ndarray,
    affine: np.ndarray,
    series_description: str = "t2_tse_tra",
    patient_id: str = "SYNTH-PELVIS",
) -> list[Path]:
    """Write ``array`` (frames, rows, columns) on the axial ``affine`` as an MR Image Storage series
    (uint16, Explicit VR Little Endian); returns the files in slice order."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    frames, rows, cols = array.shape
    stored = np.clip(np.rint(array), 0, 65535).astype(np.uint16)
    paths = []
    for index in range(frames):
        sop_uid = generate_uid()
        position = affine[:3, :3] @ np.array([index, 0, 0]) + affine[:3, 3]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber = "SYNTHT2"
        ds.Modality = "MR"
        ds.Manufacturer = "radloop synthetic"
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = series_description
        ds.PatientName = "Synthetic^Pelvis"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "M"
        ds.BodyPartExamined = "PROSTATE"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = "*tse2d1_25"
        ds.RepetitionTime = "4000"
        ds.EchoTime = "100"
        ds.EchoTrainLength = "25"
        ds.MagneticFieldStrength = "3"
        ds.SliceThickness = f"{spacing[0]:g}"
        ds.SpacingBetweenSlices = f"{spacing[0]:g}"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 5
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        row_dir = affine[:3, 2] / spacing[2]
        col_dir = affine[:3, 1] / spacing[1]
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.PixelData = stored[index].tobytes()
        path = dst_dir / f"MR{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
