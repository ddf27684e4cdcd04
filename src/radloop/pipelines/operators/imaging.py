"""Imaging operators: DICOM series → Volume at the start of a pipeline, LabelMap → SEG at its end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from radloop.pipelines.ports import DicomObjects, LabelMap, SeriesInput, Volume
from radloop.pipelines.registry import NoOptions, Operator, OperatorContext
from radloop.pipelines.volume import load_volume
from radloop.pipelines.writers.seg import write_seg


class SeriesToVolume(Operator[NoOptions]):
    """Decode the input series into an orientation-correct float32 volume (see :func:`load_volume`)."""

    name: ClassVar[str] = "dicom.series_to_volume"
    inputs: ClassVar[Mapping[str, type]] = {"series": SeriesInput}
    outputs: ClassVar[Mapping[str, type]] = {"volume": Volume}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Load ``inputs["series"]``; inconsistent or undecodable input raises InputDataError."""
        series: SeriesInput = inputs["series"]
        volume = load_volume(series.paths, series.ref)
        ctx.logger.info(
            "series %s → volume %s, spacing %s mm",
            series.ref.SeriesInstanceUID,
            volume.array.shape,
            tuple(round(s, 3) for s in volume.spacing),
        )
        return {"volume": volume}


class SegWriterOptions(BaseModel):
    """``with:`` block of ``writer.seg``."""

    model_config = ConfigDict(extra="forbid")

    series_description: str = Field(default="AI segmentation", max_length=64)
    series_number: int = Field(default=9901, ge=0, le=2**31 - 1)
    fractional: bool = False


class SegWriter(Operator[SegWriterOptions]):
    """Write the label map as a DICOM Segmentation in a new series of the source study."""

    name: ClassVar[str] = "writer.seg"
    inputs: ClassVar[Mapping[str, type]] = {"labelmap": LabelMap}
    outputs: ClassVar[Mapping[str, type]] = {"seg": DicomObjects}

    def run(self, ctx: OperatorContext, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Write ``<workdir>/seg/<SOPInstanceUID>.dcm`` with UIDs that are stable across retries."""
        options = self.options
        labelmap: LabelMap = inputs["labelmap"]
        path = write_seg(
            labelmap,
            ctx.workdir / "seg",
            series_instance_uid=ctx.uid("seg", "series"),
            sop_instance_uid=ctx.uid("seg", "instance"),
            series_number=options.series_number,
            series_description=options.series_description,
            fractional=options.fractional,
        )
        return {"seg": DicomObjects(paths=(path,), kind="SEG")}
