"""The built-in operators, registered explicitly (no discovery by import side effects)."""

from __future__ import annotations

from radloop.pipelines.operators.brain_extraction import BrainExtraction
from radloop.pipelines.operators.channels import InferSegmentChannels, ResampleTo
from radloop.pipelines.operators.imaging import SegWriter, SeriesToVolume
from radloop.pipelines.operators.inference import InferClassify, InferSegment, InferSegmentParallel
from radloop.pipelines.operators.projection import ProjectionImage
from radloop.pipelines.operators.prostate import ProstateSegmentation
from radloop.pipelines.operators.roi import LabelMapPaste, RoiCrop
from radloop.pipelines.operators.study import ScCompareWriter, SrChangeWriter
from radloop.pipelines.operators.writers import (
    FindingsSrWriter,
    RtstructWriter,
    SecondaryCaptureWriter,
    SrWriter,
)
from radloop.pipelines.registry import OperatorRegistry

BUILTIN_OPERATORS = (
    SeriesToVolume,
    BrainExtraction,
    SegWriter,
    RtstructWriter,
    SrWriter,
    FindingsSrWriter,
    SecondaryCaptureWriter,
    ProjectionImage,
    InferSegment,
    InferSegmentParallel,
    InferClassify,
    RoiCrop,
    LabelMapPaste,
    SrChangeWriter,
    ScCompareWriter,
    ResampleTo,
    InferSegmentChannels,
    ProstateSegmentation,
)


def builtin_registry() -> OperatorRegistry:
    """A registry holding every built-in operator."""
    registry = OperatorRegistry()
    for cls in BUILTIN_OPERATORS:
        registry.register(cls)
    return registry
