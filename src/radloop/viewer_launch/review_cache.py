"""What the review app loads for one AI result, converted once and kept.

For a SEG result: its job's source series as a NIfTI volume, the SEG as a NIfTI label drawing on
the same grid (see :mod:`radloop.viewer_launch.conversion`) and a small JSON of facts (grid,
segments, model, AI volume). The SEGs that *shadow* model versions wrote in the same job
(:mod:`radloop.pipelines.shadow`) are converted beside it as second opinions
(``shadow-<result id>.nii.gz``), with their volume and Dice against the AI mask in the facts;
one that cannot be read is listed with its error and never blocks the review. Files go to
``<data_dir>/review-cache/result-<id>/``, each written to a temporary name and renamed, so
concurrent requests (and processes) never see half a file; a per-result lock makes concurrent
requests in one process convert once. The loaded volume
and SEG of the last few results stay in memory for saving edits.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from radloop.core.db import session_scope
from radloop.core.errors import NotFoundError, RadloopError
from radloop.core.models import Instance, Job, Result, Series, Study
from radloop.core.refs import SeriesRef
from radloop.core.settings import Settings
from radloop.feedback.agreement import agreement
from radloop.feedback.decisions import REVIEWABLE_KIND
from radloop.pipelines.ports import Volume
from radloop.pipelines.shadow import SHADOW_KIND
from radloop.pipelines.volume import load_volume
from radloop.viewer_launch.conversion import SegContent, labels_to_nifti, read_seg, volume_to_nifti

logger = logging.getLogger(__name__)

IMAGE_FILE, MASK_FILE, FACTS_FILE = "image.nii", "mask.nii.gz", "facts.json"
FACTS_VERSION = 2


def shadow_file(shadow_id: int) -> str:
    """The converted file name of the shadow SEG result ``shadow_id`` (in its AI result's folder)."""
    return f"shadow-{shadow_id}.nii.gz"


@dataclass(frozen=True)
class ResultSource:
    """An AI SEG result with the rows and files it stands on."""

    result: Result
    job: Job
    series: Series
    study: Study
    source_paths: tuple[Path, ...]
    seg_path: Path
    shadows: tuple[tuple[int, Path], ...] = ()
    """(result id, file) of the shadow SEGs of the same job: second opinions, never the decision."""


@dataclass(frozen=True)
class Shadow:
    """A shadow version's SEG on the grid of the AI result it shadows, or why it could not be read."""

    result_id: int
    seg: SegContent | None
    error: str = ""


@dataclass(frozen=True)
class Loaded:
    """The source volume and the SEG on its grid (in memory), and the shadow SEGs beside it."""

    volume: Volume
    seg: SegContent
    shadows: tuple[Shadow, ...] = ()


def result_source(engine: Engine, settings: Settings, result_id: int) -> ResultSource:
    """The result ``result_id`` with its job, series, study and files; :class:`NotFoundError` if none."""
    with session_scope(engine) as s:
        result = s.get(Result, result_id)
        if result is None or result.kind != REVIEWABLE_KIND:
            raise NotFoundError(f"no SEG result {result_id}")
        job = s.get(Job, result.job_id)
        series = s.get(Series, job.series_id) if job else None
        study = s.get(Study, series.study_id) if series else None
        if job is None or series is None or study is None:
            raise NotFoundError(f"result {result_id}: its job, series or study is gone")
        instances = s.exec(
            select(Instance).where(Instance.series_id == series.id).order_by(col(Instance.id))
        ).all()
        paths = tuple(settings.data_dir / i.path for i in instances)
        shadows = tuple(
            (int(r.id or 0), settings.data_dir / r.path)
            for r in s.exec(
                select(Result)
                .where(Result.job_id == job.id, Result.kind == SHADOW_KIND)
                .order_by(col(Result.id))
            ).all()
        )
    if not paths:
        raise NotFoundError(f"result {result_id}: the source series has no stored instances")
    return ResultSource(result, job, series, study, paths, settings.data_dir / result.path, shadows)


class ReviewCache:
    """Converted review data per result, on disk and (for the last few) in memory."""

    def __init__(self, settings: Settings, engine: Engine, keep_in_memory: int = 2) -> None:
        self.settings = settings
        self.engine = engine
        self.root = settings.data_dir / "review-cache"
        self._keep = keep_in_memory
        self._loaded: OrderedDict[int, tuple[str, Loaded]] = OrderedDict()
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def folder(self, result_id: int) -> Path:
        """Where the converted files of ``result_id`` live."""
        return self.root / f"result-{result_id}"

    def facts(self, result_id: int) -> dict[str, Any]:
        """The facts of ``result_id`` (grid, segments, model, AI volume), converting if needed."""
        self.ensure(result_id)
        facts: dict[str, Any] = json.loads((self.folder(result_id) / FACTS_FILE).read_text())
        return facts

    def path(self, result_id: int, name: str) -> Path:
        """A converted file (``IMAGE_FILE`` or ``MASK_FILE``) of ``result_id``, converting if needed."""
        self.ensure(result_id)
        return self.folder(result_id) / name

    def ensure(self, result_id: int) -> None:
        """Convert ``result_id`` unless its files are there (once, however many threads ask)."""
        with self._lock(result_id):
            source = result_source(self.engine, self.settings, result_id)
            stamp = _stamp(source)
            if self._complete(result_id, stamp):
                return
            started = time.perf_counter()
            loaded = self._load_locked(source, stamp)
            self._write(result_id, loaded, stamp)
            logger.info("review data of result %s ready in %.2f s", result_id, time.perf_counter() - started)

    def prewarm(self, result_id: int) -> None:
        """Start converting ``result_id`` in the background (a launch does this before the page asks)."""
        thread = threading.Thread(
            target=self._prewarm, args=(result_id,), name=f"review-prewarm-{result_id}", daemon=True
        )
        thread.start()

    def _prewarm(self, result_id: int) -> None:
        try:
            self.ensure(result_id)
        except Exception:  # a notification: the request that needs the data reports the error
            logger.exception("preparing review data of result %s failed", result_id)

    def loaded(self, result_id: int) -> Loaded:
        """The volume and SEG of ``result_id`` in memory (for turning an edited mask into a SEG)."""
        with self._lock(result_id):
            source = result_source(self.engine, self.settings, result_id)
            return self._load_locked(source, _stamp(source))

    def is_ready(self, result_id: int) -> bool:
        """Whether the converted files of ``result_id`` are there and match its current files."""
        return self._complete(result_id, _stamp(result_source(self.engine, self.settings, result_id)))

    def _load_locked(self, source: ResultSource, stamp: str) -> Loaded:
        result_id = int(source.result.id or 0)
        cached = self._loaded.get(result_id)
        if cached is not None and cached[0] == stamp:
            self._loaded.move_to_end(result_id)
            return cached[1]
        ref = SeriesRef(source.study.study_instance_uid, source.series.series_instance_uid)
        volume = load_volume(source.source_paths, ref)
        shadows = tuple(_read_shadow(shadow_id, path, volume) for shadow_id, path in source.shadows)
        loaded = Loaded(volume, read_seg(source.seg_path, volume), shadows)
        self._loaded[result_id] = (stamp, loaded)
        while len(self._loaded) > self._keep:
            self._loaded.popitem(last=False)
        return loaded

    def _lock(self, result_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(result_id, threading.Lock())

    def _complete(self, result_id: int, stamp: str) -> bool:
        facts = self.folder(result_id) / FACTS_FILE
        if not facts.exists():
            return False
        stored = json.loads(facts.read_text())
        return bool(stored.get("version") == FACTS_VERSION and stored.get("source_stamp") == stamp)

    def _write(self, result_id: int, loaded: Loaded, stamp: str) -> None:
        folder = self.folder(result_id)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / IMAGE_FILE, volume_to_nifti(loaded.volume))
        _atomic_write(folder / MASK_FILE, labels_to_nifti(loaded.seg.labels, loaded.volume))
        for shadow in loaded.shadows:
            if shadow.seg is not None:
                _atomic_write(
                    folder / shadow_file(shadow.result_id), labels_to_nifti(shadow.seg.labels, loaded.volume)
                )
        facts = {**facts_of(loaded), "source_stamp": stamp}
        _atomic_write(folder / FACTS_FILE, json.dumps(facts).encode("utf-8"))  # last: marks complete


def _stamp(source: ResultSource) -> str:
    """What the converted data was made from: the SEG file's time and size, the source instances.

    A retried job rewrites its SEG in place (same UIDs), and a series can gain instances: either
    makes the converted data stale.
    """
    seg = source.seg_path.stat()
    stamp = f"{seg.st_mtime_ns}:{seg.st_size}:{len(source.source_paths)}"
    for shadow_id, path in source.shadows:  # a shadow stored after the conversion makes it stale
        stat = path.stat() if path.exists() else None
        stamp += f";{shadow_id}:{stat.st_mtime_ns}:{stat.st_size}" if stat else f";{shadow_id}:missing"
    return stamp


def _read_shadow(shadow_id: int, path: Path, volume: Volume) -> Shadow:
    """A shadow SEG on ``volume``'s grid; a broken or missing one becomes its error, not a failure."""
    try:
        return Shadow(shadow_id, read_seg(path, volume))
    except (RadloopError, InvalidDicomError, OSError, ValueError, KeyError, AttributeError) as e:
        logger.warning("shadow SEG result %s cannot be shown: %s", shadow_id, e)
        return Shadow(shadow_id, None, f"cannot read the shadow SEG: {e}")


def facts_of(loaded: Loaded) -> dict[str, Any]:
    """Grid, segments, model and AI volume per segment: what the app shows beside the images."""
    volume, seg = loaded.volume, loaded.seg
    voxel_ml = volume.voxel_volume_ml
    counts = {s.number: int((seg.labels == s.number).sum()) for s in seg.segments}
    return {
        "version": FACTS_VERSION,
        "shape": list(volume.array.shape),
        "spacing_mm": list(volume.spacing),
        "voxel_volume_ml": voxel_ml,
        "model": {"name": seg.algorithm.name, "version": seg.algorithm.version},
        "seg_series_description": seg.series_description,
        "segments": [
            {
                "number": s.number,
                "label": s.label,
                "type": s.type.meaning,
                "ai_volume_ml": counts[s.number] * voxel_ml,
            }
            for s in seg.segments
        ],
        "ai_volume_ml": sum(counts.values()) * voxel_ml,
        "shadows": [_shadow_facts(shadow, loaded) for shadow in loaded.shadows],
    }


def _shadow_facts(shadow: Shadow, loaded: Loaded) -> dict[str, Any]:
    """A shadow SEG's model, volume and agreement with the AI (production) mask."""
    if shadow.seg is None:
        return {"result_id": shadow.result_id, "error": shadow.error}
    measured = agreement(loaded.seg.labels, shadow.seg.labels, loaded.volume.voxel_volume_ml)
    return {
        "result_id": shadow.result_id,
        "error": "",
        "model": {"name": shadow.seg.algorithm.name, "version": shadow.seg.algorithm.version},
        "series_description": shadow.seg.series_description,
        "volume_ml": measured.volume_final_ml,
        "dice_vs_ai": measured.dice,
        "volume_difference_ml": measured.volume_change_ml,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
