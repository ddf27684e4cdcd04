"""The real test data sets (`../shared/data`, pydicom's test files) and small readers for them.

A plain module like `peers`: tests import it as `helpers_data` (pytest puts `tests/` on
`sys.path`). Missing data fails the test with a hint; it never skips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.data import get_testdata_file

from peers import gunzip_series, shared_data_dir
from radloop.core.refs import SeriesRef

__all__ = [
    "ct_series_paths",
    "pydicom_test_file",
    "series_ref_of",
    "shared_data_dir",
    "t1_series_paths",
]


def ct_series_paths() -> list[Path]:
    """The 20 JPEG 2000 CT slices of `ct-abdomen-totalseg/series/` (sendable UIDs), by name."""
    paths = sorted((shared_data_dir() / "ct-abdomen-totalseg" / "series").glob("*.dcm"))
    assert len(paths) == 20, f"expected 20 CT slices, found {len(paths)}"
    return paths


def t1_series_paths(dst_dir: Path) -> list[Path]:
    """The 170 T1 MR slices of `mr-brain-t1-philips/series/`, decompressed into `dst_dir`."""
    paths = gunzip_series(shared_data_dir() / "mr-brain-t1-philips" / "series", dst_dir)
    assert len(paths) == 170, f"expected 170 T1 slices, found {len(paths)}"
    return paths


def pydicom_test_file(name: str) -> Path:
    """A file shipped with pydicom or the `pydicom-data` package, never downloaded.

    Only the singular `get_testdata_file` is used, with `download=False`: the plural glob form
    and downloads try the network and hang offline.
    """
    found = get_testdata_file(name, download=False)
    if not isinstance(found, str):
        pytest.fail(f"pydicom test file {name!r} not found (pip install pydicom-data)", pytrace=False)
    return Path(found)


def series_ref_of(path: Path) -> SeriesRef:
    """The (StudyInstanceUID, SeriesInstanceUID) of the instance at `path`."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return SeriesRef(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))


def ellipsoid(
    shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]
) -> npt.NDArray[np.bool_]:
    """A solid ellipsoid mask on an index grid: a label of known size for writer tests."""
    grid = np.indices(shape, dtype=np.float64)
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0
    return np.asarray(inside, dtype=bool)
