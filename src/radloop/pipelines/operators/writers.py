"""Result writers besides SEG: RTSTRUCT, SR measurement reports, burned-in secondary captures.

Each writer is an operator a pipeline includes or leaves out, so a pipeline writes only the
outputs its PACS can take; each writes into ``<workdir>/<kind>/`` with UIDs from
:meth:`OperatorContext.uid`, so a retried job rewrites the same instances (a PACS receiving
them again replaces its copy instead of adding a second one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pydicom
from pydantic import BaseModel, ConfigDict, Field

from radloop.pipelines.ports import DicomObjects, Findings, LabelMap
from radloop.pipelines.registry import Operator, OperatorContext
from radloop.pipelines.writers.rtstruct import write_rtstruct
from radloop.pipelines.writers.secondary_capture import CaptureSeries, write_secondary_captures
from radloop.pipelines.writers.sr import ReportSeries, write_findings_report, write_volume_report


class _SeriesOptions(BaseModel):
    """The new series a writer creates in the source study."""

    model_config = ConfigDict(extra="forbid")

    series_description: str = Field(max_length=64)
    series_number: int = Field(ge=0, le=2**31 - 1)


class RtstructWriterOptions(_SeriesOptions):
    """``with:`` block of ``writer.rtstruct``."""

    series_description: str = Field(default="AI contours", max_length=64)
    series_number: int = Field(default=9902, ge=0, le=2**31 - 1)
    structure_set_label: str = Field(default="AI", min_length=1, max_length=16)


class SrWriterOptions(_SeriesOptions):
    """``with:`` block of ``writer.sr`` and ``writer.sr_findings``."""

    series_description: str = Field(default="AI measurements", max_length=64)
    series_number: int = Field(default=9903, ge=0, le=2**31 - 1)


class SecondaryCaptureWriterOptions(_SeriesOptions):
    """``with:`` block of ``writer.secondary_capture``."""

    series_description: str = Field(default="AI overlay - NOT FOR DIAGNOSIS", max_length=64)
    series_number: int = Field(default=9904, ge=0, le=2**31 - 1)
    slices: Literal["labelled", "all"] = Field(
        default="labelled", description="'labelled': only slices holding a segment; 'all': every source slice"
    )


class RtstructWriter(Operator[RtstructWriterOptions]):
    """Write the label map as an RT Structure Set: one ROI per segment, contours on every slice."""

    name: ClassVar[str] = "writer.rtstruct"
    inputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}
    outputs: ClassVar[Mapping[str, type]] = {"rtstruct": DicomObjects}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<workdir>/rtstruct/<SOPInstanceUID>.dcm``."""
        options = self.options
        path = write_rtstruct(
            inputs["labelmap"],
            ctx.workdir / "rtstruct",
            series_instance_uid=ctx.uid("rtstruct", "series"),
            sop_instance_uid=ctx.uid("rtstruct", "instance"),
            series_number=options.series_number,
            series_description=options.series_description,
            structure_set_label=options.structure_set_label,
        )
        return {"rtstruct": DicomObjects(paths=(path,), kind="RTSTRUCT")}


class SrWriter(Operator[SrWriterOptions]):
    """Write a TID 1500 measurement report with each segment's volume, referencing the SEG."""

    name: ClassVar[str] = "writer.sr"
    inputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap, "seg": DicomObjects}
    outputs: ClassVar[Mapping[str, type]] = {"sr": DicomObjects}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<workdir>/sr/<SOPInstanceUID>.dcm``; ``seg`` must be the one SEG of this label map."""
        options = self.options
        seg: DicomObjects = inputs["seg"]
        if seg.kind != "SEG" or len(seg.paths) != 1:
            raise ValueError(f"{self.name}: input 'seg' must be one SEG, got {len(seg.paths)} {seg.kind}")
        header = pydicom.dcmread(seg.paths[0], stop_before_pixels=True)
        series = _report_series(ctx, options)
        path = write_volume_report(inputs["labelmap"], header, ctx.workdir / "sr", series)
        return {"sr": DicomObjects(paths=(path,), kind="SR")}


class FindingsSrWriter(Operator[SrWriterOptions]):
    """Write a TID 1500 measurement report with a classifier's findings and their probabilities."""

    name: ClassVar[str] = "writer.sr_findings"
    inputs: ClassVar[Mapping[str, type]] = {"findings": Findings}
    outputs: ClassVar[Mapping[str, type]] = {"sr": DicomObjects}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<workdir>/sr/<SOPInstanceUID>.dcm``."""
        options = self.options
        findings: Findings = inputs["findings"]
        series = _report_series(ctx, options)
        out_dir = ctx.workdir / "sr"
        path = write_findings_report(findings.items, findings.reference, findings.algorithm, out_dir, series)
        return {"sr": DicomObjects(paths=(path,), kind="SR")}


def _report_series(ctx: OperatorContext, options: SrWriterOptions) -> ReportSeries:
    return ReportSeries(
        series_instance_uid=ctx.uid("sr", "series"),
        sop_instance_uid=ctx.uid("sr", "instance"),
        series_number=options.series_number,
        series_description=options.series_description,
    )


class SecondaryCaptureWriter(Operator[SecondaryCaptureWriterOptions]):
    """Write the source slices with the segment outlines, a legend and a NOT FOR DIAGNOSIS banner."""

    name: ClassVar[str] = "writer.secondary_capture"
    inputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}
    outputs: ClassVar[Mapping[str, type]] = {"sc": DicomObjects}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<workdir>/sc/<SOPInstanceUID>.dcm``, one per (labelled) source slice."""
        options = self.options
        series = CaptureSeries(ctx.uid("sc", "series"), options.series_number, options.series_description)
        out_dir = ctx.workdir / "sc"
        paths = write_secondary_captures(inputs["labelmap"], out_dir, series, slices=options.slices)
        ctx.logger.info("%d secondary capture images", len(paths))
        return {"sc": DicomObjects(paths=tuple(paths), kind="SC")}
