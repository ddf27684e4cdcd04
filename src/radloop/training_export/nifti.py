"""Volume and label arrays → NIfTI-1 images, the way dcm2niix writes them.

Convention (the NIfTI standard's, which dcm2niix, nibabel, ITK, MONAI and nnU-Net share):

* World coordinates are RAS+ millimetres: DICOM's LPS patient coordinates with x and y negated.
  The volume affine of :class:`~radloop.pipelines.ports.Volume` (over (frame, row, column)
  indices) thus becomes ``diag(-1, -1, 1, 1) @ affine`` (:mod:`radloop.core.geometry`).
* The voxel axes are permuted and flipped (never resampled) to the closest RAS orientation,
  as ``nibabel.as_closest_canonical`` does and as dcm2niix does for 3-D acquisitions: every
  case of a dataset then has the same axis order whatever the acquisition plane, which
  nnU-Net (it trains in array space) relies on. The affine still maps each voxel to the very
  point it came from, so image and label grids equal the source series' geometry.
* ``sform`` and ``qform`` both hold the affine, with code 1 (scanner anatomical); units mm and s.
* Images are int16 when every value is a whole number in range (stored values scaled by the
  Modality LUT, as radloop's volume has them), float32 otherwise; labels are uint8 (uint16 past
  255 labels) with intent ``label``. Header text fields are empty (:mod:`.deid`).

Files are gzip-compressed deterministically (no time stamp, no file name), so the same case
always gives the same bytes.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from radloop.core.geometry import lps_to_ras
from radloop.pipelines.ports import Volume
from radloop.training_export.deid import clean_nifti_header

GZIP_LEVEL = 1
"""nibabel's own default: images compress little further at higher levels, and much more slowly."""
_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class Reorientation:
    """How a volume's (frame, row, column) array becomes the RAS-closest NIfTI array, and its affine."""

    ornt: npt.NDArray[np.float64]
    affine: npt.NDArray[np.float64]

    def apply(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``array`` (on the volume grid) permuted and flipped onto the NIfTI grid."""
        oriented = nib.orientations.apply_orientation(array, self.ornt)  # type: ignore[no-untyped-call]
        return np.ascontiguousarray(oriented)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the NIfTI axes."""
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def canonical_reorientation(volume: Volume) -> Reorientation:
    """The reorientation of ``volume`` to the closest RAS axes (``nib.as_closest_canonical``'s)."""
    ras = lps_to_ras(volume.affine)
    ornt = nib.orientations.io_orientation(ras)  # type: ignore[no-untyped-call]
    inverse = nib.orientations.inv_ornt_aff(ornt, volume.array.shape)  # type: ignore[no-untyped-call]
    affine = np.asarray(ras @ inverse, dtype=np.float64)
    return Reorientation(ornt=np.asarray(ornt, dtype=np.float64), affine=affine)


def image_nifti(volume: Volume, reorientation: Reorientation) -> nib.Nifti1Image:
    """The volume's pixels as a NIfTI image on the reoriented grid."""
    array = reorientation.apply(_image_values(volume.array))
    return _nifti(array, reorientation.affine, intent=None)


def label_nifti(labels: npt.NDArray[np.integer], reorientation: Reorientation) -> nib.Nifti1Image:
    """Label values (on the volume grid) as a NIfTI label image on the reoriented grid."""
    dtype = np.uint8 if int(labels.max(initial=0)) < 256 else np.uint16
    return _nifti(reorientation.apply(labels.astype(dtype)), reorientation.affine, intent="label")


def _image_values(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """int16 when lossless (whole numbers in range), else float32."""
    if array.size and float(array.min()) >= _INT16.min and float(array.max()) <= _INT16.max:
        rounded: npt.NDArray[Any] = np.rint(array)
        if np.array_equal(rounded, array):
            return rounded.astype(np.int16)
    return array.astype(np.float32)


def _nifti(array: npt.NDArray[Any], affine: npt.NDArray[np.float64], intent: str | None) -> nib.Nifti1Image:
    """A NIfTI-1 image with sform = qform = ``affine`` (code scanner), mm units, no text, no extensions."""
    image = nib.Nifti1Image(array, affine)  # type: ignore[no-untyped-call]
    header = image.header
    image.set_sform(affine, code="scanner")  # type: ignore[no-untyped-call]
    image.set_qform(affine, code="scanner")  # type: ignore[no-untyped-call]
    header.set_xyzt_units("mm", "sec")  # type: ignore[no-untyped-call]
    header.set_data_dtype(array.dtype)  # type: ignore[no-untyped-call]
    if intent is not None:
        header.set_intent(intent)  # type: ignore[no-untyped-call]
    header.extensions.clear()
    clean_nifti_header(header)
    image.update_header()  # type: ignore[no-untyped-call]
    return image


def write_nifti_gz(image: nib.Nifti1Image, path: Path) -> int:
    """Write ``image`` as ``path`` (.nii.gz) atomically and deterministically; returns the byte count."""
    data = gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return len(data)
