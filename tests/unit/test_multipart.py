"""The incremental multipart/related reader (STOW-RS bodies) against the writer (WADO-RS bodies)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radloop.connector.dicomweb.multipart import (
    MAX_HEAD_BYTES,
    MultipartError,
    MultipartReader,
    SpoolingMultipartReader,
    new_boundary,
    parse_accept,
    parse_media_type,
    write_parts,
)


@settings(max_examples=200, deadline=None)
@given(
    contents=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=40),
    preamble=st.sampled_from([b"", b"preamble text\r\n"]),
)
def test_parts_survive_any_chunking(contents: list[bytes], cuts: list[int], preamble: bytes) -> None:
    boundary = new_boundary()
    body = preamble + b"".join(write_parts((("application/dicom", c) for c in contents), boundary))
    reader = MultipartReader(boundary)
    parts, position, i = [], 0, 0
    while position < len(body):
        size = cuts[i % len(cuts)]
        parts += reader.feed(body[position : position + size])
        position += size
        i += 1
    reader.finish()
    assert [p.content for p in parts] == contents
    assert all(p.content_type is not None and p.content_type.type == "application/dicom" for p in parts)


def test_a_body_without_its_closing_boundary_is_refused() -> None:
    reader = MultipartReader("b")
    reader.feed(b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM")
    with pytest.raises(MultipartError, match="closing boundary"):
        reader.finish()


def test_media_types_and_accept_headers() -> None:
    media = parse_media_type('Multipart/Related; type="application/dicom"; boundary=abc')
    assert media.type == "multipart/related" and media.params == {
        "type": "application/dicom",
        "boundary": "abc",
    }
    accept = parse_accept(
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1, '
        'multipart/related; type="image/jp2"'
    )
    assert [a.params.get("type") for a in accept] == ["application/octet-stream", "image/jp2"]
    assert accept[0].params["transfer-syntax"] == "1.2.840.10008.1.2.1"


@settings(max_examples=100, deadline=None)
@given(
    contents=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=40),
)
def test_spooled_parts_survive_any_chunking(
    contents: list[bytes], cuts: list[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    spool = tmp_path_factory.mktemp("spool")
    boundary = new_boundary()
    body = b"".join(write_parts((("application/dicom", c) for c in contents), boundary))
    reader = SpoolingMultipartReader(boundary, spool)
    parts, position, i = [], 0, 0
    while position < len(body):
        size = cuts[i % len(cuts)]
        parts += reader.feed(body[position : position + size])
        position += size
        i += 1
    reader.finish()
    assert [p.path.read_bytes() for p in parts] == contents
    assert all(p.content_type is not None and p.content_type.type == "application/dicom" for p in parts)
    for p in parts:
        p.path.unlink()
    assert not list(spool.iterdir())


def test_a_spooling_reader_removes_what_it_still_owns(tmp_path: Path) -> None:
    reader = SpoolingMultipartReader("b", tmp_path)
    done = reader.feed(b"--b\r\n\r\nfirst\r\n--b\r\nContent-Type: application/dicom\r\n\r\nhalf a part")
    assert [p.path.read_bytes() for p in done] == [b"first"]
    assert len(list(tmp_path.iterdir())) == 2
    done[0].path.unlink()
    reader.close()
    assert not list(tmp_path.iterdir())
    with pytest.raises(MultipartError, match="closing boundary"):
        reader.finish()


def test_part_headers_are_bounded(tmp_path: Path) -> None:
    reader = SpoolingMultipartReader("b", tmp_path)
    with pytest.raises(MultipartError, match="headers are longer"):
        reader.feed(b"--b\r\nX-Long: " + b"a" * (MAX_HEAD_BYTES + 10))
