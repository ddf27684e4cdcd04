"""Volume change over time: a TID 1500 measurement report comparing a study with its prior.

Content (DICOM Comprehensive 3D SR, template TID 1500, written with highdicom):

* a *Volumetric ROI Measurements* group (TID 1411) for the current study: the segment in the
  current SEG, its Volume (SNOMED CT 118565006) in mL;
* a *Measurements* group (TID 1501) for the prior study: the same finding's Volume in mL, with
  the prior series' images as its sources;
* a *Measurements* group for the change: the volume change in mL and in percent per year (from the
  two StudyDates), coded with radloop's private scheme ``99RADLOOP`` until DICOM has codes.

The evidence names both studies: the current SEG and images go to the Current Requested
Procedure Evidence Sequence, the prior images (another study) to Pertinent Other Evidence.
Without a prior the report holds the current volume only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from radloop.pipelines.ports import Code, LabelMap
from radloop.pipelines.writers.equipment import coded_concept
from radloop.pipelines.writers.source import source_headers
from radloop.pipelines.writers.sr import (
    MILLILITRE,
    ReportSeries,
    _algorithm,
    _check_seg_matches,
    _tracking,
    _write,
    segment_volumes,
)

VOLUME_CHANGE = Code("RLVOLCHG", "99RADLOOP", "Volume change")
VOLUME_CHANGE_PER_YEAR = Code("RLVOLCHGPY", "99RADLOOP", "Volume change per year")
PERCENT_PER_YEAR = hd.sr.CodedConcept(value="%/a", scheme_designator="UCUM", meaning="percent per year")
DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class VolumeChange:
    """The labelled volume of a study and of its prior, and how it changed."""

    current_ml: float
    prior_ml: float
    years: float

    @property
    def change_ml(self) -> float:
        return self.current_ml - self.prior_ml

    @property
    def percent_per_year(self) -> float | None:
        """Relative change per year, in %; None when both studies carry the same date."""
        if self.years <= 0 or self.prior_ml <= 0:
            return None
        return 100.0 * self.change_ml / self.prior_ml / self.years


def labelled_volume_ml(labelmap: LabelMap) -> float:
    """The volume of every segment of ``labelmap`` together, in mL."""
    return sum(sv.volume_ml for sv in segment_volumes(labelmap))


def volume_change(current: LabelMap, prior: LabelMap) -> VolumeChange:
    """Volumes of both label maps and the years between their studies (by StudyDate)."""
    years = (_study_date(current) - _study_date(prior)).days / DAYS_PER_YEAR
    return VolumeChange(labelled_volume_ml(current), labelled_volume_ml(prior), years)


def write_change_report(
    current: LabelMap, prior: LabelMap | None, seg: Dataset, out_dir: Path, series: ReportSeries
) -> Path:
    """An SR with the current volume (in ``seg``), the prior's and the change.

    Without a prior (``prior`` None) it holds the current volume only."""
    _check_seg_matches(seg, current)
    algorithm_id = _algorithm(current.algorithm)
    segment = sorted(current.segments, key=lambda s: s.number)[0]
    current_group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(series, f"{segment.label} (current)", 1),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=1,
            source_series=hd.sr.SourceSeriesForSegmentation(current.reference.series.SeriesInstanceUID),
        ),
        finding_type=coded_concept(segment.type),
        finding_category=coded_concept(segment.category),
        algorithm_id=algorithm_id,
        measurements=[_volume(labelled_volume_ml(current), algorithm_id)],
    )
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [current_group]
    evidence = [seg, *source_headers(current.reference).values()]
    if prior is not None:
        change = volume_change(current, prior)
        prior_headers = list(source_headers(prior.reference).values())
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(series, f"{segment.label} (prior)", 2),
                finding_type=coded_concept(segment.type),
                algorithm_id=algorithm_id,
                measurements=[_volume(change.prior_ml, algorithm_id)],
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in prior_headers
                ],
            )
        )
        measurements = [
            hd.sr.Measurement(
                name=coded_concept(VOLUME_CHANGE),
                value=change.change_ml,
                unit=MILLILITRE,
                algorithm_id=algorithm_id,
            )
        ]
        if change.percent_per_year is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=coded_concept(VOLUME_CHANGE_PER_YEAR),
                    value=change.percent_per_year,
                    unit=PERCENT_PER_YEAR,
                    algorithm_id=algorithm_id,
                )
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(series, f"{segment.label} volume change", 3),
                finding_type=coded_concept(segment.type),
                algorithm_id=algorithm_id,
                measurements=measurements,
            )
        )
        evidence += prior_headers
    return _write(groups, evidence, current.algorithm, out_dir, series)


def _volume(value_ml: float, algorithm_id: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.SCT.Volume, value=value_ml, unit=MILLILITRE, algorithm_id=algorithm_id
    )


def _study_date(labelmap: LabelMap) -> datetime:
    header = next(iter(source_headers(labelmap.reference).values()))
    try:
        return datetime.strptime(str(header.get("StudyDate", "") or ""), "%Y%m%d")
    except ValueError as e:
        raise ValueError(
            f"the study of series {labelmap.reference.series.SeriesInstanceUID} has no StudyDate"
        ) from e
