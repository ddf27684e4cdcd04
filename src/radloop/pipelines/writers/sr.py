"""Measurement reports: DICOM Comprehensive 3D SR, template TID 1500, written with highdicom.

Two kinds of content, one document structure (TID 1500 "Imaging Measurement Report"):

* **Segment volumes** (:func:`write_volume_report`): one *Volumetric ROI Measurements* group
  (TID 1411) per segment, referencing the segment in the SEG instance and the source images it
  was derived from (as IHE AIR asks), with the segment's coded finding type/category, the algorithm, and its
  Volume (SNOMED CT 118565006) in mL. The volume is the segment's voxel count × the voxel
  volume of the source grid, i.e. exactly what the SEG holds. A label map's flags
  (``LabelMap.flags``, e.g. a result outside the algorithm's plausible range) become
  qualitative evaluations "AI result plausibility" of each group.
* **Classifier findings** (:func:`write_findings_report`): one *Measurements* group (TID 1501)
  per finding, with the finding type, its Probability (DCM 122157, unit "1") and, when the
  model made a decision, a qualitative evaluation Present/Absent; the source images are named
  as the group's sources.

The SR is a new series in the source study; its evidence (Current Requested Procedure Evidence
Sequence) lists the SEG and the source images, as TID 1500 references require; the algorithm
is named in the Contributing Equipment Sequence (IHE AIR, :mod:`.equipment`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from radloop.core.uids import derived_uid
from radloop.pipelines.ports import AlgorithmIdentification, Code, Finding, LabelMap, Segment, Volume
from radloop.pipelines.writers.equipment import add_contributing_equipment, coded_concept
from radloop.pipelines.writers.ihe_codes import RESULT_PLAUSIBILITY
from radloop.pipelines.writers.source import source_headers

logger = logging.getLogger(__name__)

MILLILITRE = hd.sr.CodedConcept(value="mL", scheme_designator="UCUM", meaning="milliliter")
NO_UNITS = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
SEGMENTATION_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})


@dataclass(frozen=True)
class ReportSeries:
    """Where the SR goes: its UIDs (stable across retries), series number and description."""

    series_instance_uid: str
    sop_instance_uid: str
    series_number: int
    series_description: str
    procedure_reported: Code = IMAGING_PROCEDURE
    manufacturer: str = "radloop"


@dataclass(frozen=True)
class SegmentVolume:
    """One segment's size: label value, SEG segment number, voxel count and volume in mL."""

    segment: Segment
    seg_segment_number: int
    voxels: int
    volume_ml: float


def segment_volumes(labelmap: LabelMap) -> list[SegmentVolume]:
    """Voxel count × voxel volume of every segment, in SEG segment-number order (by label value)."""
    counts = np.bincount(labelmap.array.ravel().astype(np.int64).clip(min=0))
    voxel_ml = labelmap.reference.voxel_volume_ml
    out = []
    for seg_number, segment in enumerate(sorted(labelmap.segments, key=lambda s: s.number), start=1):
        voxels = int(counts[segment.number]) if segment.number < len(counts) else 0
        out.append(SegmentVolume(segment, seg_number, voxels, voxels * voxel_ml))
    return out


def write_volume_report(labelmap: LabelMap, seg: Dataset, out_dir: Path, series: ReportSeries) -> Path:
    """An SR with the volume of each segment of ``labelmap``, which ``seg`` (its SEG header) holds."""
    _check_seg_matches(seg, labelmap)
    volume = labelmap.reference
    headers = source_headers(volume)
    algorithm_id = _algorithm(labelmap.algorithm)
    groups = [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(
                series, sv.segment.tracking_id or sv.segment.label, sv.segment.number
            ),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=sv.seg_segment_number,
                source_images=_segmentation_sources(headers.values()),
            ),
            finding_type=coded_concept(sv.segment.type),
            finding_category=coded_concept(sv.segment.category),
            algorithm_id=algorithm_id,
            measurements=[
                hd.sr.Measurement(
                    name=codes.SCT.Volume, value=sv.volume_ml, unit=MILLILITRE, algorithm_id=algorithm_id
                )
            ],
            qualitative_evaluations=_flags(labelmap),
        )
        for sv in segment_volumes(labelmap)
    ]
    evidence = [seg, *headers.values()]
    return _write(groups, evidence, labelmap.algorithm, out_dir, series)


def write_findings_report(
    findings: Sequence[Finding],
    reference: Volume,
    algorithm: AlgorithmIdentification,
    out_dir: Path,
    series: ReportSeries,
) -> Path:
    """An SR with each classifier finding of ``findings`` about the images of ``reference``."""
    if not findings:
        raise ValueError("write_findings_report: no findings to report")
    headers = list(source_headers(reference).values())
    algorithm_id = _algorithm(algorithm)
    sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in headers]
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(series, finding.type.meaning, index),
            finding_type=coded_concept(finding.type),
            algorithm_id=algorithm_id,
            finding_sites=[hd.sr.FindingSite(coded_concept(finding.site))] if finding.site else None,
            measurements=[
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=finding.probability,
                    unit=NO_UNITS,
                    algorithm_id=algorithm_id,
                )
            ],
            qualitative_evaluations=_decision(finding),
            source_images=sources,
        )
        for index, finding in enumerate(findings, start=1)
    ]
    return _write(groups, headers, algorithm, out_dir, series)


def _write(
    groups: Sequence[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ],
    evidence: Sequence[Dataset],
    algorithm: AlgorithmIdentification,
    out_dir: Path,
    series: ReportSeries,
) -> Path:
    """Assemble TID 1500 around ``groups`` and save it as ``<out_dir>/<SOPInstanceUID>.dcm``."""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device-observer", algorithm.name, algorithm.version),
            name=f"{algorithm.name} {algorithm.version}"[:64],
            manufacturer_name=series.manufacturer,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=coded_concept(series.procedure_reported),
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series.series_instance_uid,
        series_number=series.series_number,
        sop_instance_uid=series.sop_instance_uid,
        instance_number=1,
        manufacturer=series.manufacturer,
        is_complete=True,
        series_description=series.series_description[:64],
    )
    add_contributing_equipment(sr, algorithm, series.manufacturer)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{series.sop_instance_uid}.dcm"
    sr.save_as(path)
    logger.info("wrote SR %s with %d measurement groups", path.name, len(groups))
    return path


def _segmentation_sources(headers: Iterable[Dataset]) -> list[hd.sr.SourceImageForSegmentation]:
    """Each source image the segment was derived from (IHE AIR: the group names its source images)."""
    return [hd.sr.SourceImageForSegmentation.from_source_image(ds) for ds in headers]


def _check_seg_matches(seg: Dataset, labelmap: LabelMap) -> None:
    """``seg`` must be a SEG of ``labelmap``'s source series with its segments in label order."""
    if str(seg.get("SOPClassUID", "")) not in SEGMENTATION_SOP_CLASSES:
        raise ValueError(f"write_volume_report: seg has SOP class {seg.get('SOPClassUID')}, not Segmentation")
    referenced = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    if labelmap.reference.series.SeriesInstanceUID not in referenced:
        raise ValueError("write_volume_report: the SEG does not reference the labelmap's source series")
    want = [s.label for s in sorted(labelmap.segments, key=lambda s: s.number)]
    have = [str(item.SegmentLabel) for item in seg.SegmentSequence]
    if want != have:
        raise ValueError(f"write_volume_report: SEG segments {have} differ from the labelmap's {want}")


def _tracking(series: ReportSeries, identifier: str, number: int) -> hd.sr.TrackingIdentifier:
    """A tracking identifier whose UID is the same on every retry of the same report."""
    return hd.sr.TrackingIdentifier(
        uid=derived_uid(series.sop_instance_uid, "tracking", str(number)), identifier=identifier[:64]
    )


def _flags(labelmap: LabelMap) -> list[hd.sr.QualitativeEvaluation] | None:
    """The label map's flags (e.g. outside the plausible range) as "AI result plausibility" evaluations."""
    if not labelmap.flags:
        return None
    return [
        hd.sr.QualitativeEvaluation(name=coded_concept(RESULT_PLAUSIBILITY), value=coded_concept(flag))
        for flag in labelmap.flags
    ]


def _decision(finding: Finding) -> list[hd.sr.QualitativeEvaluation] | None:
    if finding.present is None:
        return None
    value = codes.SCT.Present if finding.present else codes.SCT.Absent
    return [hd.sr.QualitativeEvaluation(name=coded_concept(finding.type), value=value)]


def _algorithm(algorithm: AlgorithmIdentification) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
