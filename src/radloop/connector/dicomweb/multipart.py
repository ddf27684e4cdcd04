"""``multipart/related`` (RFC 2387) bodies as DICOMweb uses them (PS3.18 §8.6): read and write.

:class:`MultipartReader` is incremental: feed it the body chunk by chunk as it arrives and it
returns each part once the delimiter after it has been seen, so only one part at a time is held
in memory. :func:`write_parts` produces such a body for WADO-RS answers.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from radloop.core.errors import RequestError

CRLF = b"\r\n"
_PARAM_RE = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


class MultipartError(RequestError):
    """A multipart body or its Content-Type is malformed."""


@dataclass(frozen=True)
class MediaType:
    """A parsed media type: ``type/subtype`` (lower case) and its parameters (names lower case)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)


def parse_media_type(value: str) -> MediaType:
    """Parse one media type such as ``multipart/related; type="application/dicom"; boundary=x``."""
    head, _, _rest = value.partition(";")
    params = {m.group(1).lower(): _unquote(m.group(2)) for m in _PARAM_RE.finditer(value[len(head) :])}
    return MediaType(head.strip().lower(), params)


def parse_accept(value: str) -> list[MediaType]:
    """The media types of an Accept header, in order (q-values are ignored: order is preference)."""
    out = []
    for item in _split_top_level(value):
        if item.strip():
            out.append(parse_media_type(item))
    return out


def _split_top_level(value: str) -> list[str]:
    """Split on commas that are not inside quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names lower case) and its content."""

    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> MediaType | None:
        raw = self.headers.get("content-type")
        return parse_media_type(raw) if raw else None


class MultipartReader:
    """Incremental reader of a multipart body with a known boundary."""

    def __init__(self, boundary: str) -> None:
        if not 1 <= len(boundary) <= 70:
            raise MultipartError("multipart boundary must be 1-70 characters")
        self._delimiter = CRLF + b"--" + boundary.encode("latin-1")
        self._buffer = bytearray(CRLF)  # the first delimiter may start the body: give it its CRLF
        self._in_preamble = True
        self._done = False
        self._scan_from = 0

    @property
    def done(self) -> bool:
        """True once the closing delimiter has been read."""
        return self._done

    def feed(self, chunk: bytes) -> list[Part]:
        """Add body bytes; returns the parts completed by them."""
        if self._done:
            return []
        self._buffer += chunk
        parts = []
        while not self._done:
            index = self._buffer.find(self._delimiter, self._scan_from)
            if index < 0:
                self._scan_from = max(0, len(self._buffer) - len(self._delimiter) + 1)
                break
            after = index + len(self._delimiter)
            if len(self._buffer) < after + 2:
                self._scan_from = index
                break  # need the two bytes after the delimiter
            if not self._in_preamble:
                parts.append(_split_part(bytes(self._buffer[:index])))
            self._in_preamble = False
            if self._buffer[after : after + 2] == b"--":
                self._done = True
                del self._buffer[:]
                break
            line_end = self._buffer.find(CRLF, after)
            if line_end < 0:
                self._scan_from = index
                break  # transport padding not complete yet
            del self._buffer[: line_end + 2]
            self._scan_from = 0
        return parts

    def finish(self) -> None:
        """Call at the end of the body: :class:`MultipartError` if the closing delimiter never came."""
        if not self._done:
            raise MultipartError("multipart body ended before its closing boundary")


def _split_part(raw: bytes) -> Part:
    if raw.startswith(CRLF):
        return Part({}, raw[2:])
    head, sep, body = raw.partition(CRLF + CRLF)
    if not sep:
        raise MultipartError("a body part has no blank line after its headers")
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise MultipartError(f"malformed body part header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return Part(headers, body)


def new_boundary() -> str:
    """A boundary that will not occur in DICOM content by chance."""
    return f"radloop-{secrets.token_hex(16)}"


def write_parts(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """The body of a multipart message from ``(content type, content)`` pairs, part by part."""
    for content_type, content in parts:
        yield b"--" + boundary.encode() + CRLF + f"Content-Type: {content_type}".encode() + CRLF + CRLF
        yield content
        yield CRLF
    yield b"--" + boundary.encode() + b"--" + CRLF
