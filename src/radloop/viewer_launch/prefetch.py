"""Prefetch for the review app: convert new AI results before anyone opens them.

A radiologist opens a result minutes or hours after the pipeline wrote it; converting it then
(reading the series, NIfTI, the SEG on its grid: about 1.5 s for 170 slices) would add to the
time to the first image. ``radloop serve`` runs :meth:`ReviewPrefetcher.tick` every few
seconds: results awaiting review without converted data are converted, newest first, and the
review cache is trimmed to ``review.cache_max_results`` results (oldest first).

The conversion runs in a child process at the lowest CPU priority (``nice`` 19), started at the
first result to convert: in ``radloop serve``'s own process it would hold the GIL against the
outbox sending the same result, the DICOM listener and the dispatcher, and on a small machine
it would take CPU from the next job's inference. Prefetching must never delay those.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
from concurrent.futures import ProcessPoolExecutor

from sqlalchemy.engine import Engine

from radloop.core.db import make_engine
from radloop.core.logging import configure_logging
from radloop.core.settings import Settings
from radloop.feedback.decisions import pending_results
from radloop.viewer_launch.review_cache import ReviewCache

logger = logging.getLogger(__name__)


class ReviewPrefetcher:
    """Converts results awaiting review ahead of their launch; trims the cache."""

    def __init__(self, settings: Settings, engine: Engine, batch: int = 5) -> None:
        self.settings = settings
        self.cache = ReviewCache(settings, engine, keep_in_memory=0)
        self.engine = engine
        self.batch = batch
        self._failed: set[int] = set()
        self._pool: ProcessPoolExecutor | None = None

    def tick(self) -> int:
        """Convert up to ``batch`` pending results that have no review data yet; returns how many."""
        done = 0
        for row in pending_results(self.engine, limit=self.settings.review.cache_max_results):
            result_id = int(row["result_id"])
            if done >= self.batch or result_id in self._failed:
                continue
            try:
                if self.cache.is_ready(result_id):
                    continue
                self._converter().submit(_convert, result_id).result()
                done += 1
            except Exception as e:  # best effort: opening the result reports the error; not retried here
                self._failed.add(result_id)
                logger.warning("review data of result %s cannot be prepared: %s", result_id, e)
        self.trim()
        return done

    def _converter(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_converter,
                initargs=(self.settings.to_worker_json(),),  # secrets unmasked, for the child
            )
        return self._pool

    def trim(self) -> None:
        """Delete the converted data of the oldest results beyond ``review.cache_max_results``."""
        if not self.cache.root.exists():
            return
        folders = sorted(
            (p for p in self.cache.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        for folder in folders[: max(0, len(folders) - self.settings.review.cache_max_results)]:
            shutil.rmtree(folder, ignore_errors=True)


# --- inside the converter process ---------------------------------------------------------------
_CONVERTER: dict[str, ReviewCache] = {}


def _init_converter(settings_json: str) -> None:
    """Converter process start: lowest CPU priority, die with the parent, own engine and cache."""
    os.nice(19)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        logger.debug("PR_SET_PDEATHSIG unavailable; the converter ends with its current result")
    settings = Settings.from_worker_json(settings_json)
    configure_logging(settings.log_level)
    _CONVERTER["cache"] = ReviewCache(settings, make_engine(settings), keep_in_memory=0)


def _convert(result_id: int) -> None:
    _CONVERTER["cache"].ensure(result_id)
