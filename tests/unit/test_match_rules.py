"""``MatchRules.explain_mismatch``: which rule a series breaks, in words (routing and run-pipeline)."""

from __future__ import annotations

import pytest

from radloop.core.models import Series
from radloop.pipelines.spec import MatchRules

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _series(**fields: object) -> Series:
    values: dict[str, object] = {
        "study_id": 1,
        "series_instance_uid": "1.2.3.4",
        "modality": "MR",
        "series_description": "T1 MPRAGE",
        "sop_class_uid": MR,
        "called_ae": "RADLOOP",
        "calling_ae": "SCANNER1",
        "instance_count": 170,
    }
    values.update(fields)
    return Series(**values)


RULES = MatchRules(
    modality=["MR"],
    sop_class_uid=[MR],
    series_description="(?i)mprage|t1",
    called_ae=["RADLOOP"],
    calling_ae=["SCANNER1"],
    min_instances=64,
)


def test_a_series_meeting_every_rule_matches() -> None:
    assert RULES.explain_mismatch(_series()) is None
    assert MatchRules().explain_mismatch(_series(modality="", instance_count=1)) is None


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"modality": "CT"}, "Modality CT not in ['MR']"),
        ({"modality": ""}, "Modality (none) not in ['MR']"),
        ({"sop_class_uid": CT}, f"SOPClassUID {CT} not in ['{MR}']"),
        ({"series_description": "localizer"}, "SeriesDescription 'localizer' does not match /(?i)mprage|t1/"),
        ({"called_ae": "OTHER"}, "called AE OTHER not in ['RADLOOP']"),
        ({"calling_ae": "CT7"}, "calling AE CT7 not in ['SCANNER1']"),
        ({"instance_count": 3}, "3 instances, fewer than the 64 required"),
        ({"modality": "CT", "instance_count": 3}, "Modality CT not in ['MR']"),  # the first rule broken
    ],
)
def test_the_first_broken_rule_is_named(fields: dict[str, object], why: str) -> None:
    assert RULES.explain_mismatch(_series(**fields)) == why
