"""Peer-supplied values are escaped and cut before they reach a log line."""

from __future__ import annotations

from radloop.connector.peer_text import shown


def test_control_characters_are_escaped_and_long_values_cut() -> None:
    assert shown("MODALITY1") == "MODALITY1"
    assert shown("EVIL\nFAKE LOG\x1b[2J") == "EVIL\\nFAKE LOG\\x1b[2J"
    assert shown("A" * 100) == "A" * 64 + "…"
    assert shown("\x00\x7f\u2028") == "\\x00\\x7f\\u2028"
