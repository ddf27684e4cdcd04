"""The one error hierarchy of radloop.

Code raises the most specific class and chains the cause (``raise … from e``); only the
edges (the DICOM SCP, the HTTP API, the CLI, the job runner) turn these into a DICOM status,
an HTTP problem, a CLI message or a job's ``error`` column.
"""

from __future__ import annotations


class RadloopError(Exception):
    """Base class of every error radloop raises on purpose."""


class ConfigError(RadloopError):
    """Settings or a pipeline file are invalid; the message names the file and field."""


class StoreError(RadloopError):
    """An instance could not be stored or indexed."""


class InvalidInstanceError(StoreError):
    """A received object is not acceptable (missing or malformed UIDs, undecodable header)."""


class DiskFullError(StoreError):
    """Free space is below the configured floor; new data is refused instead of filling the disk."""


class JobError(RadloopError):
    """A pipeline job failed. ``transient`` errors are retried; others fail the job at once."""

    transient: bool = True


class PermanentJobError(JobError):
    """A job failed for a reason a retry cannot fix (bad input, unsupported data)."""

    transient = False


class InputDataError(PermanentJobError):
    """The input series cannot be processed (e.g. inconsistent geometry, undecodable pixels)."""


class InferenceError(JobError):
    """A model could not be run (backend unavailable, model missing, wrong shapes)."""


class DeliveryError(RadloopError):
    """A result could not be delivered to a destination; the outbox will retry."""
