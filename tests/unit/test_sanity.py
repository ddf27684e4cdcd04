"""Input sanity (connector/sanity.py): hostile objects refused with the rule named, real ones accepted."""

from __future__ import annotations

import gzip
import resource
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

import hostile_instances as hostile
from helpers_data import pydicom_test_file
from radloop.connector.sanity import (
    InconsistentInstanceError,
    InstanceLimitError,
    InstanceLimits,
    MalformedInstanceError,
    check_part10,
    inflate_bounded,
)

LIMITS = InstanceLimits()


def test_valid_ct_is_accepted_and_its_header_read() -> None:
    ds = hostile.ct_dataset()
    header = check_part10(hostile.part10(ds), LIMITS)
    assert header.SOPInstanceUID == ds.SOPInstanceUID
    assert "PixelData" not in header
    assert header.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("make", "error", "rule"),
    [
        (hostile.million_frames, InconsistentInstanceError, "PixelData-length"),
        (hostile.short_pixel_data, InconsistentInstanceError, "PixelData-length"),
        (hostile.no_rows, InconsistentInstanceError, "Rows/Columns"),
        (hostile.garbage_after_undefined_sq, MalformedInstanceError, "vr"),
        (hostile.garbage_after_undefined_ow, MalformedInstanceError, "undefined-length"),
    ],
)
def test_hostile_objects_are_refused_naming_the_rule(
    make: Callable[[], bytes], error: type[Exception], rule: str
) -> None:
    with pytest.raises(error) as caught:
        check_part10(make(), LIMITS)
    assert caught.value.rule == rule  # type: ignore[attr-defined]


def test_limits_are_settings() -> None:
    ds = hostile.ct_dataset(rows=64, columns=64, frames_of_data=3)
    ds.NumberOfFrames = 3
    data = hostile.part10(ds)
    check_part10(data, LIMITS)
    with pytest.raises(InstanceLimitError, match="max_frames"):
        check_part10(data, InstanceLimits(max_frames=2))
    with pytest.raises(InstanceLimitError, match="max_rows"):
        check_part10(data, InstanceLimits(max_rows=32))
    with pytest.raises(InstanceLimitError, match="max_instance_bytes"):
        check_part10(data, InstanceLimits(max_instance_bytes=16_000))


def test_truncated_element_is_refused() -> None:
    data = hostile.part10(hostile.ct_dataset())
    with pytest.raises(MalformedInstanceError, match="ends inside"):
        check_part10(data[:-100], LIMITS)


def test_deflate_bomb_is_refused_while_inflating_without_holding_it() -> None:
    bomb = hostile.deflate_bomb(200 * 1000 * 1000)
    assert len(bomb) < 400_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InstanceLimitError, match="max_instance_bytes"):
        check_part10(bomb, InstanceLimits(max_instance_bytes=64 << 20))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 32 * 1024, f"peak RSS grew {grown_kib} KiB while refusing the bomb"
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = z.compress(bytes(10 << 20)) + z.flush()
    with pytest.raises(InstanceLimitError):
        inflate_bounded(zeros, 1 << 20)
    assert len(inflate_bounded(zeros, 10 << 20)) == 10 << 20


def test_small_deflated_object_is_accepted() -> None:
    ds = hostile.ct_dataset()
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = z.compress(hostile.encode_dataset(ds)) + z.flush()
    header = check_part10(hostile.part10(ds, body, DeflatedExplicitVRLittleEndian), LIMITS)
    assert header.Rows == 128
    assert inflate_bounded(body, 1 << 20) == hostile.encode_dataset(ds)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg.dcm",
        "image_dfl.dcm",
        "emri_small.dcm",
        "SC_rgb_small_odd.dcm",
        "UN_sequence.dcm",
        "rtdose.dcm",
        "MR_small_RLE.dcm",
    ],
)
def test_real_objects_are_accepted(name: str) -> None:
    check_part10(pydicom_test_file(name).read_bytes(), LIMITS)


def test_shared_data_is_accepted(shared_data: Path, ct_j2k_series_dir: Path) -> None:
    t1 = sorted((shared_data / "mr-brain-t1-philips").rglob("*.dcm.gz"))[:10]
    ct = sorted((shared_data / "ct-abdomen-totalseg").rglob("*.dcm"))[:10]
    ct += sorted(ct_j2k_series_dir.rglob("*.dcm"))[:5]
    assert t1 and ct
    for gz in t1:
        check_part10(gzip.decompress(gz.read_bytes()), LIMITS)
    for path in ct:
        check_part10(path.read_bytes(), LIMITS)
