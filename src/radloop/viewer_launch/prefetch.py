"""Prefetch for the review app: convert new AI results before anyone opens them.

A radiologist opens a result minutes or hours after the pipeline wrote it; converting it then
(reading the series, NIfTI, the SEG on its grid: about 1.5 s for 170 slices) would add to the
time to the first image. ``radloop serve`` runs :meth:`ReviewPrefetcher.tick` every few
seconds: results awaiting review without converted data are converted, newest first, and the
review cache is trimmed to ``review.cache_max_results`` results (oldest first).
"""

from __future__ import annotations

import logging
import shutil

from sqlalchemy.engine import Engine

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
                self.cache.ensure(result_id)
                done += 1
            except Exception as e:  # best effort: opening the result reports the error; not retried here
                self._failed.add(result_id)
                logger.warning("review data of result %s cannot be prepared: %s", result_id, e)
        self.trim()
        return done

    def trim(self) -> None:
        """Delete the converted data of the oldest results beyond ``review.cache_max_results``."""
        if not self.cache.root.exists():
            return
        folders = sorted(
            (p for p in self.cache.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime
        )
        for folder in folders[: max(0, len(folders) - self.settings.review.cache_max_results)]:
            shutil.rmtree(folder, ignore_errors=True)
