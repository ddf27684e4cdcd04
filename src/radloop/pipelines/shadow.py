"""Shadow runs: a model version staged ``shadow`` segments beside production, and is never delivered.

``infer.segment`` calls :func:`run_shadows` after its production run. Each shadow version of the
model segments the same volume; its label map is written as a DICOM SEG (its own series, the
shadow version named in the algorithm identification and the series description) into the job's
``shadow/`` folder. The job runner stores those files as results of kind :data:`SHADOW_KIND` and
queues no delivery for them (:func:`shadow_files`), so they are there to compare and review as a
second opinion, and nothing they hold reaches a PACS. A failing shadow version is logged and
never fails the job: production's answer is what the job is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from radloop.core.errors import RadloopError
from radloop.pipelines.ports import LabelMap, Volume
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.timing import StageTimer
from radloop.pipelines.writers.seg import write_seg

SHADOW_KIND = "shadow-seg"
"""The result kind of a shadow version's SEG: stored, never delivered."""
SHADOW_DIR = "shadow"
SHADOW_SERIES_NUMBER = 9990


def run_shadows(
    ctx: OperatorContext, model: str, volume: Volume, mode: Literal["auto", "always", "never"]
) -> list[Path]:
    """Segment ``volume`` with every shadow version of ``model``; the SEG files written."""
    from radloop.pipelines.operators.inference import algorithm_of, segment, segments_of

    if ctx.models is None:
        return []
    written = []
    for shadow in ctx.models.shadows(model):
        spec = shadow.require_spec()
        try:
            labels = segment(shadow, volume, mode, StageTimer())
        except RadloopError as e:  # a shadow never fails the job
            ctx.logger.warning("shadow %s@%s failed: %s", spec.name, spec.version, e)
            continue
        voxels = int(np.count_nonzero(labels))
        ctx.logger.info("shadow %s@%s: %d voxels labelled (not delivered)", spec.name, spec.version, voxels)
        if voxels == 0:
            continue
        labelmap = LabelMap(labels, volume, segments_of(spec), algorithm_of(spec))
        written.append(
            write_seg(
                labelmap,
                ctx.workdir / SHADOW_DIR,
                series_instance_uid=ctx.uid("shadow", spec.name, spec.version, "series"),
                sop_instance_uid=ctx.uid("shadow", spec.name, spec.version, "sop"),
                series_number=SHADOW_SERIES_NUMBER,
                series_description=f"SHADOW {spec.name}@{spec.version} (not for clinical use)"[:64],
            )
        )
    return written


def shadow_files(workdir: Path) -> list[Path]:
    """The shadow SEGs a job's operators wrote into ``workdir``."""
    return sorted((workdir / SHADOW_DIR).glob("*.dcm"))
