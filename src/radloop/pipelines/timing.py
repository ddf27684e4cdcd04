"""Named, timed stages of an operator run (``load``, ``pre``, ``infer``, ``invert``, ``post``).

An operator times its stages with the :class:`StageTimer` its context carries
(``ctx.stages``); the step loop gives every step a fresh one and the job runner stores its
seconds in the step's ``job_step.stages`` column, so per-stage timings are data, not only
log text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageTimer:
    """Seconds spent per named stage, in the order the stages were first entered, summed over entries."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` (e.g. time measured by another timer)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def include(self, other: StageTimer, prefix: str) -> None:
        """Add every stage of ``other`` as ``<prefix>.<stage>`` (one model of several, say)."""
        for name, seconds in other.seconds.items():
            self.add(f"{prefix}.{name}", seconds)

    def summary(self) -> str:
        """E.g. ``load 0.20 s, pre 0.41 s, infer 2.90 s, post 0.62 s``."""
        return ", ".join(f"{name} {s:.2f} s" for name, s in self.seconds.items())

    def rounded(self, digits: int = 4) -> dict[str, float]:
        """The seconds per stage rounded to ``digits`` decimals, as stored in ``job_step.stages``."""
        return {name: round(s, digits) for name, s in self.seconds.items()}
