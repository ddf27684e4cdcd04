"""Operators of study-level pipelines: results that compare the study with its prior."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pydicom
from pydantic import BaseModel, ConfigDict, Field

from radloop.pipelines.ports import DicomObjects, LabelMap
from radloop.pipelines.registry import Operator, OperatorContext
from radloop.pipelines.writers.sc_compare import write_comparison_capture
from radloop.pipelines.writers.secondary_capture import CaptureSeries
from radloop.pipelines.writers.sr import ReportSeries
from radloop.pipelines.writers.sr_change import write_change_report


class SrChangeWriterOptions(BaseModel):
    """``with:`` block of ``writer.sr_change``: the new SR series in the current study."""

    model_config = ConfigDict(extra="forbid")

    series_description: str = Field(default="AI volume change", max_length=64)
    series_number: int = Field(default=9905, ge=0, le=2**31 - 1)


class SrChangeWriter(Operator[SrChangeWriterOptions]):
    """Write a TID 1500 report with the labelled volume now, in the prior study, and the change.

    ``prior_labelmap`` may be None (no prior found): the report then holds the current volume only.
    """

    name: ClassVar[str] = "writer.sr_change"
    inputs: ClassVar[Mapping[str, type]] = {
        "labelmap": LabelMap,
        "prior_labelmap": LabelMap,
        "seg": DicomObjects,
    }
    outputs: ClassVar[Mapping[str, type]] = {"sr": DicomObjects}
    optional_inputs: ClassVar[frozenset[str]] = frozenset({"prior_labelmap"})

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<workdir>/sr_change/<SOPInstanceUID>.dcm``; ``seg`` is the current label map's SEG."""
        seg: DicomObjects = inputs["seg"]
        if seg.kind != "SEG" or len(seg.paths) != 1:
            raise ValueError(f"{self.name}: input 'seg' must be one SEG, got {len(seg.paths)} {seg.kind}")
        header = pydicom.dcmread(seg.paths[0], stop_before_pixels=True)
        series = ReportSeries(
            series_instance_uid=ctx.uid("sr_change", "series"),
            sop_instance_uid=ctx.uid("sr_change", "instance"),
            series_number=self.options.series_number,
            series_description=self.options.series_description,
        )
        prior: LabelMap | None = inputs.get("prior_labelmap")
        if prior is None:
            ctx.logger.info("no prior: the report holds the current volume only")
        path = write_change_report(inputs["labelmap"], prior, header, ctx.workdir / "sr_change", series)
        return {"sr": DicomObjects(paths=(path,), kind="SR")}


class ScCompareWriterOptions(BaseModel):
    """``with:`` block of ``writer.sc_compare``: the new Secondary Capture series in the current study."""

    model_config = ConfigDict(extra="forbid")

    series_description: str = Field(default="AI now vs prior - NOT FOR DIAGNOSIS", max_length=64)
    series_number: int = Field(default=9906, ge=0, le=2**31 - 1)


class ScCompareWriter(Operator[ScCompareWriterOptions]):
    """Write one image with a slice of the current and of the prior study side by side, masks outlined."""

    name: ClassVar[str] = "writer.sc_compare"
    inputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap, "prior_labelmap": LabelMap}
    outputs: ClassVar[Mapping[str, type]] = {"sc": DicomObjects}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<workdir>/sc_compare/<SOPInstanceUID>.dcm``."""
        series = CaptureSeries(
            ctx.uid("sc_compare", "series"), self.options.series_number, self.options.series_description
        )
        path = write_comparison_capture(
            inputs["labelmap"], inputs["prior_labelmap"], ctx.workdir / "sc_compare", series
        )
        return {"sc": DicomObjects(paths=(path,), kind="SC")}
