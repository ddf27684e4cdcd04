"""The one error hierarchy of radloop.

Code raises the most specific class and chains the cause (``raise … from e``); only the
edges (the DICOM SCP, the HTTP API, the CLI, the job runner) turn these into a DICOM status,
an HTTP problem, a CLI message or a job's ``error`` column.
"""

from __future__ import annotations

import struct

from pydicom.errors import BytesLengthException


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


class ModelNotFoundError(PermanentJobError):
    """A pipeline names a model that is neither in the model store nor served by a configured backend."""


class NotFoundError(RadloopError):
    """The named thing (a study, a job, a pipeline, a pull source...) does not exist."""


class RequestError(RadloopError):
    """A request from a client is malformed (a bad multipart body, a bad query key)."""


class UnsupportedMediaTypeError(RequestError):
    """A request body is of a media type this endpoint does not accept."""


class NotAcceptableError(RequestError):
    """None of the media types (or transfer syntaxes) a client accepts can be produced."""


class PayloadTooLargeError(RequestError):
    """A request body is larger than the configured limit."""


class PullError(RadloopError):
    """A pull source could not be searched or a study could not be retrieved from it."""


class ExportError(RadloopError):
    """A training dataset could not be exported (an incompatible export folder, an unreadable case)."""


# What pydicom raises on bytes it cannot make sense of (found by fuzzing the header path): every
# one of them means "cannot understand this object", never a server error.
PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    OverflowError,
    NotImplementedError,
    struct.error,
    BytesLengthException,
)
