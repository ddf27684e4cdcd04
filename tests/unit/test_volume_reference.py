"""series → volume gives exactly what it gave before it was made faster.

The digests below were taken with the implementation of commit 08b884d (pydicom's pixel decoder
for every file, before the uncompressed fast path): the float32 array bytes, shape, affine,
frame of reference, modality, source frames and source file names of each volume. A faster
reader must reproduce them bit for bit, on the real T1 (uncompressed, Philips rescaling), the
JPEG 2000 CT series and pydicom's transfer-syntax and Enhanced test files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from helpers_data import ct_series_paths, pydicom_test_file, series_ref_of, t1_series_paths
from radloop.pipelines.ports import Volume
from radloop.pipelines.volume import load_volume

BEFORE = {
    "t1": "bb93361eb39298f88042038e52061b6e1e2d7352810e8620d160478c9ac5c385",
    "ct": "5594573c790f2bcb0fc6da51e8ee3879d79f647c87a4a9ad9f2edd4e34bbb215",
    "MR_small.dcm": "12e2f908fefffb0c9af6a486bc04b54f0683d342003dc3113f9acdeb519eaae9",
    "MR_small_RLE.dcm": "e1add1eebf209445cd07a38645309061a1fd62036dbd568d38555612600d0e30",
    "MR_small_jp2klossless.dcm": "6eca554968aa0a78ad63b9a382d8724b1b0c3f89bdbf2be3f0769ddf592fa2f3",
    "MR_small_jpeg_ls_lossless.dcm": "c457e923ea4dadcc7c1a606215d57d733aff44b7a2bfebd93af97121a53fc46f",
    "MR_small_bigendian.dcm": "527a1bea77a8b3306ce69ad9ef3ce43d933a2148624a25668f5480cfa05d07b9",
    "MR_small_implicit.dcm": "199726755556ceea36b26548dba925cc1fce50278a2ccb009f13111b6a4031e6",
    "eCT_Supplemental.dcm": "5560e6cdc8c6b7c5eb5859ec59c7cc93dde00713ad78f69e3d45b1c66ee5926b",
    "CT_small.dcm": "3779df248269d4e9aeaccfd99572ed440cc1695e9a7ccfde1c9ccb4a48ca5473",
}


def _digest(volume: Volume) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(volume.array).tobytes())
    h.update(str(volume.array.shape).encode())
    h.update(volume.array.dtype.str.encode())
    h.update(np.ascontiguousarray(volume.affine).tobytes())
    described = (
        volume.frame_of_reference_uid,
        volume.modality,
        volume.source_frames,
        [p.name for p in volume.source_paths],
    )
    h.update(repr(described).encode())
    return h.hexdigest()


def test_t1_volume_is_unchanged(tmp_path: Path) -> None:
    paths = t1_series_paths(tmp_path)
    assert _digest(load_volume(paths, series_ref_of(paths[0]))) == BEFORE["t1"]


def test_jpeg2000_ct_volume_is_unchanged() -> None:
    paths = ct_series_paths()
    assert _digest(load_volume(paths, series_ref_of(paths[0]))) == BEFORE["ct"]


@pytest.mark.parametrize("name", [n for n in BEFORE if n.endswith(".dcm")])
def test_pydicom_test_file_volume_is_unchanged(name: str) -> None:
    path = pydicom_test_file(name)
    assert _digest(load_volume([path], series_ref_of(path))) == BEFORE[name]
