"""The incremental multipart/related reader (STOW-RS bodies) against the writer (WADO-RS bodies)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radloop.connector.dicomweb.multipart import (
    MultipartError,
    MultipartReader,
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
