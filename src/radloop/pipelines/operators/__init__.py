"""The built-in operators, registered explicitly (no discovery by import side effects)."""

from __future__ import annotations

from radloop.pipelines.operators.brain_extraction import BrainExtraction
from radloop.pipelines.operators.imaging import SegWriter, SeriesToVolume
from radloop.pipelines.registry import OperatorRegistry

BUILTIN_OPERATORS = (SeriesToVolume, BrainExtraction, SegWriter)


def builtin_registry() -> OperatorRegistry:
    """A registry holding every built-in operator."""
    registry = OperatorRegistry()
    for cls in BUILTIN_OPERATORS:
        registry.register(cls)
    return registry
