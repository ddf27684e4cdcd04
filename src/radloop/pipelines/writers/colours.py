"""Display colours of segments, shared by the writers so one segment looks the same everywhere
(RTSTRUCT ROIDisplayColor, the outline and legend of a secondary capture)."""

from __future__ import annotations

SEGMENT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 255, 64),
    (64, 160, 255),
    (255, 220, 0),
    (255, 64, 255),
    (0, 255, 255),
    (255, 140, 0),
    (160, 100, 255),
)
"""RGB, 0-255: well apart from each other and from grey, so an outline stands out on any image."""


def segment_colour(position: int) -> tuple[int, int, int]:
    """The colour of the segment at ``position`` (0-based, in label order), repeating after eight."""
    return SEGMENT_COLOURS[position % len(SEGMENT_COLOURS)]
