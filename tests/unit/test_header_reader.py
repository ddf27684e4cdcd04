"""The header reader gives exactly the data set pydicom's ``read_partial`` gives for groups
0002-0028, or None (then pydicom reads the file): raw elements, undefined-length sequences,
File Meta Information, preamble, file name and encodings all compared."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from helpers_data import ct_series_paths, pydicom_test_file, t1_series_paths
from radloop.pipelines.header_reader import LAST_GROUP, read_first_groups

FAST = [
    "MR_small.dcm",
    "CT_small.dcm",
    "SC_rgb_small_odd.dcm",
    "liver_1frame.dcm",
    "test-SR.dcm",
    "MR_truncated.dcm",  # cut short in its pixel data, after group 0028
    "badVR.dcm",
]
OTHERS = [
    "MR_small_implicit.dcm",  # Implicit VR
    "MR_small_bigendian.dcm",
    "no_meta.dcm",  # no preamble or File Meta Information
    "image_dfl.dcm",  # deflated
    "UN_sequence.dcm",  # a sequence of undefined length encoded as UN
    "nested_priv_SQ.dcm",
    "rtplan_truncated.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
    "meta_missing_tsyntax.dcm",
]


def _after_group_0028(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group > LAST_GROUP


def _pydicom(path: Path) -> FileDataset:
    with path.open("rb") as fp:
        return read_partial(fp, stop_when=_after_group_0028, force=True)


def _fast(path: Path) -> FileDataset | None:
    with path.open("rb") as fp:
        return read_first_groups(fp.read(), fp)


def _assert_same_elements(ours: Dataset, theirs: Dataset) -> None:
    """Same tags, each as the same raw (or parsed) element, and equal once decoded."""
    assert list(ours.keys()) == list(theirs.keys())
    for tag in theirs.keys():  # noqa: SIM118 - keys() does not decode the values
        mine, expected = ours.get_item(tag), theirs.get_item(tag)
        assert type(mine) is type(expected), tag
        assert mine == expected, tag
    assert ours == theirs


def _assert_same(path: Path) -> None:
    ours, theirs = _fast(path), _pydicom(path)
    assert ours is not None, f"{path.name}: expected the fast path"
    _assert_same_elements(ours, theirs)
    _assert_same_elements(ours.file_meta, theirs.file_meta)
    for attribute in ("preamble", "filename", "fileobj_type", "original_encoding", "original_character_set"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert ours.file_meta.original_encoding == theirs.file_meta.original_encoding


def test_t1_headers_are_read_as_pydicom_reads_them(tmp_path: Path) -> None:
    """Philips headers: 129 elements up to group 0028, three sequences of undefined length."""
    for path in t1_series_paths(tmp_path)[::17]:
        _assert_same(path)


@pytest.mark.parametrize("name", FAST)
def test_explicit_little_endian_files_are_read_as_pydicom_reads_them(name: str) -> None:
    _assert_same(pydicom_test_file(name))


@pytest.mark.parametrize("name", OTHERS)
def test_other_layouts_are_left_to_pydicom(name: str) -> None:
    assert _fast(pydicom_test_file(name)) is None


def test_jpeg2000_ct_headers_are_left_to_pydicom() -> None:
    assert _fast(ct_series_paths()[0]) is None


def test_a_header_cut_short_is_left_to_pydicom(tmp_path: Path) -> None:
    data = pydicom_test_file("MR_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:700])  # inside group 0008
    assert _fast(cut) is None


def test_a_sequence_with_a_bad_item_is_read_as_pydicom_reads_it_or_left_to_it(tmp_path: Path) -> None:
    """A broken item tag inside an undefined-length sequence: pydicom's own sequence reader parses
    it (so the result is pydicom's), or it raises and the file goes to pydicom whole."""
    raw = t1_series_paths(tmp_path / "t1")[50].read_bytes()
    marker = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"  # ReferencedImageSequence, undefined length
    start = raw.index(marker) + len(marker)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(raw[:start] + b"\x12\x34\x56\x78" + raw[start + 4 :])
    if _fast(broken) is not None:
        _assert_same(broken)
