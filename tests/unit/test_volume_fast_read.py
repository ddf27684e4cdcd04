"""The volume reader's fast path (groups 0002-0028 plus trailing pixel data) gives the same
volume as reading every file whole, and files laid out otherwise are read whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian

from helpers_data import series_ref_of, t1_series_paths
from radloop.core.errors import InputDataError
from radloop.pipelines.volume import load_volume


@pytest.fixture(scope="module")
def t1_few(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return t1_series_paths(tmp_path_factory.mktemp("t1"))[60:66]


def _whole_file_slices(paths: list[Path]) -> dict[str, np.ndarray]:
    """Each file's rescaled slice as pydicom decodes it from the whole file, by SOPInstanceUID."""
    slices = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        scaled = (ds.pixel_array * float(ds.get("RescaleSlope", 1))).astype(np.float32)
        slices[str(ds.SOPInstanceUID)] = scaled + np.float32(float(ds.get("RescaleIntercept", 0)))
    return slices


def _rewrite(paths: list[Path], folder: Path, change: str) -> list[Path]:
    folder.mkdir()
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        if change == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif change == "trailing":
            ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # Data Set Trailing Padding after the pixel data
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True, implicit_vr=change == "implicit")
        out.append(target)
    return out


@pytest.mark.parametrize("change", ["none", "implicit", "trailing"])
def test_fast_and_whole_file_reads_give_the_same_volume(
    t1_few: list[Path], tmp_path: Path, change: str
) -> None:
    paths = t1_few if change == "none" else _rewrite(t1_few, tmp_path / change, change)
    volume = load_volume(paths, series_ref_of(paths[0]))
    expected = _whole_file_slices(paths)
    assert len(volume.source_frames) == len(paths)
    for index, frame in enumerate(volume.source_frames):
        assert np.array_equal(volume.array[index], expected[frame.sop_instance_uid]), frame


def test_a_bad_value_fails_by_file_name_although_other_slices_repeat_the_tag(
    t1_few: list[Path], tmp_path: Path
) -> None:
    """Values repeated across slices are decoded once per series; a slice whose copy of the tag holds
    a different (bad) value is still decoded, and fails the load naming that file."""
    folder = tmp_path / "bad"
    folder.mkdir()
    paths = []
    for path in t1_few:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00189087, "FD", 1000.0)  # Diffusion b-value: group 0018, inside the fast path
        paths.append(folder / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    good = b"\x18\x00\x87\x90FD\x08\x00" + np.float64(1000.0).tobytes()
    raw = paths[3].read_bytes()
    assert raw.count(good) == 1
    paths[3].write_bytes(raw.replace(good, b"\x18\x00\x87\x90FD\x05\x00" + b"\x01" * 5))  # 5 bytes: no FD

    with pytest.raises(InputDataError, match=paths[3].name):
        load_volume(paths, series_ref_of(paths[0]))
    volume = load_volume(paths[:3], series_ref_of(paths[0]))  # the same tag with good values loads
    assert len(volume.source_frames) == 3


@pytest.mark.parametrize(
    ("bits_stored", "signed", "bits_allocated"), [(12, 0, 16), (12, 1, 16), (16, 1, 16), (6, 0, 8), (7, 1, 8)]
)
def test_uncompressed_pixels_read_from_the_bytes_match_pydicoms_decoder(
    t1_few: list[Path], tmp_path: Path, bits_stored: int, signed: int, bits_allocated: int
) -> None:
    """Stored values come straight from the bytes for uncompressed data: the unused high bits
    (set to garbage here) are cleared or sign-extended exactly as pydicom's decoder does."""
    rng = np.random.default_rng(bits_stored + 10 * signed + bits_allocated)
    paths = []
    for path in t1_few:
        ds = pydicom.dcmread(path)
        shape = (int(ds.Rows), int(ds.Columns))
        stored = rng.integers(0, 2**bits_allocated, size=shape, dtype=np.uint64)
        ds.PixelData = stored.astype(f"<u{bits_allocated // 8}").tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
        ds.PixelRepresentation = signed
        paths.append(tmp_path / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    volume = load_volume(paths, series_ref_of(paths[0]))
    expected = _whole_file_slices(paths)
    for index, frame in enumerate(volume.source_frames):
        assert np.array_equal(volume.array[index], expected[frame.sop_instance_uid]), frame
