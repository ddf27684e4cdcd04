"""Priors: the same patient's previous study, found at a pull source for a study-level job.

A ``prior`` input of a study-level pipeline (see :class:`~radloop.pipelines.spec.PriorRule`) is
resolved when the job runs, not when it is queued: searching and retrieving take seconds to
minutes and must not hold up routing. The job runner asks a :class:`PriorLookup` (the connector's
:class:`~radloop.connector.pull.priors.PriorFinder`, built by the runtime) for the series; no
prior is an outcome, not an error: the input is None and the operators that need it are skipped.
"""

from __future__ import annotations

from typing import Protocol

from radloop.pipelines.spec import PriorRule


class PriorLookup(Protocol):
    """Finds, retrieves and selects a prior series for a study; returns its ``series.id`` or None."""

    def find_prior(self, study_instance_uid: str, rule: PriorRule) -> int | None: ...
