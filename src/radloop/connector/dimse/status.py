"""DIMSE status codes radloop sends and reads, in one place (PS3.4 Annex B, C; PS3.7 Annex C).

A C-STORE SCP answers one of these; a C-STORE/C-MOVE/C-GET SCU reads them. Which failure
radloop picks for which refusal:

* ``OUT_OF_RESOURCES`` (0xA700, "Refused: Out of Resources"): the disk floor, a store that cannot
  write, and a data set over a configured limit (``dicom.max_instance_bytes``, ``max_frames`` …);
* ``DATASET_MISMATCH`` (0xA900, "Error: Data Set does not match SOP Class"): the data set contradicts
  its IOD: Pixel Data without Rows/Columns, Pixel Data shorter than NumberOfFrames × Rows × …,
  a SOP Instance UID already stored in another study;
* ``CANNOT_UNDERSTAND`` (0xC000, "Error: Cannot understand"): the encoding cannot be walked
  (lengths past the end, garbage after an element, missing identifying UIDs);
* ``PROCESSING_FAILURE`` (0x0110): an unexpected failure inside radloop.
"""

from __future__ import annotations

from radloop.connector.sanity import InconsistentInstanceError, InstanceLimitError
from radloop.connector.store import SopInstanceConflictError
from radloop.core.errors import DiskFullError, InvalidInstanceError, StoreError

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
WARNING = 0xB000  # C-MOVE/C-GET: sub-operations complete, one or more failures or warnings
PENDING = (0xFF00, 0xFF01)


def is_success_or_warning(code: int) -> bool:
    """Success (0x0000) or a Warning (0xB000-0xBFFF, e.g. 0xB000 coercion, 0xB007 mismatch)."""
    return code == SUCCESS or 0xB000 <= code <= 0xBFFF


def for_refusal(error: StoreError) -> int:
    """The C-STORE failure status for an instance the store or the sanity checks refused."""
    if isinstance(error, InconsistentInstanceError | SopInstanceConflictError):
        return DATASET_MISMATCH
    if isinstance(error, InstanceLimitError | DiskFullError):
        return OUT_OF_RESOURCES
    if isinstance(error, InvalidInstanceError):
        return CANNOT_UNDERSTAND
    return OUT_OF_RESOURCES  # the store could not write or index: a resource problem, retry later
