"""Where results go. Destination config is a discriminated union on ``kind`` (see settings);
each config type maps to one sender class, registered explicitly in :data:`SENDERS`.

Every sender is idempotent towards its peer: results carry deterministic SOP Instance UIDs, so
sending one again (an outbox retry after a lost acknowledgement) replaces or is ignored by the
PACS's copy; it never makes a second one.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from radloop.connector.dimse.scu import send_files
from radloop.connector.dimse.tls import tls_args
from radloop.core.errors import DeliveryError
from radloop.core.settings import DicomDestination, DicomwebDestination, FolderDestination, XnatDestination
from radloop.xnat_plugin.destination import XnatSender

log = logging.getLogger(__name__)


class Sender(Protocol):
    """Delivers one DICOM file; raises :class:`DeliveryError` on failure (the outbox retries)."""

    def send(self, path: Path) -> None: ...


@runtime_checkable
class BatchSender(Protocol):
    """A sender that delivers several files at once (over parallel associations, say)."""

    def send_many(self, paths: Sequence[Path]) -> list[str]:
        """Deliver ``paths``; per path, ``""`` when delivered, else why not. Raises
        :class:`DeliveryError` when nothing could be delivered at all (the peer is unreachable)."""
        ...


class DicomSender:
    """C-STORE to a DICOM peer, over DICOM TLS when the destination has ``tls``; a batch goes
    over up to ``associations`` parallel associations."""

    def __init__(self, config: DicomDestination) -> None:
        self.config = config

    def send(self, path: Path) -> None:
        """C-STORE one file over one association."""
        (error,) = self._send([path], 1)
        if error:
            raise DeliveryError(error)

    def send_many(self, paths: Sequence[Path]) -> list[str]:
        """C-STORE ``paths`` over up to ``associations`` parallel associations."""
        return self._send(paths, self.config.associations)

    def _send(self, paths: Sequence[Path], associations: int) -> list[str]:
        c = self.config
        secure = tls_args(c.tls, c.host, f"destinations[{c.name}].tls")
        report = send_files(
            paths,
            c.host,
            c.port,
            c.ae_title,
            c.calling_ae_title,
            timeout_s=c.timeout_s,
            associations=associations,
            tls_args=secure,
        )
        failed = dict(report.failed)
        where = f"C-STORE to {c.ae_title}@{c.host}:{c.port}"
        return [f"{where}: {failed[p]}" if p in failed else "" for p in paths]


class DicomwebSender:
    """STOW-RS to a DICOMweb server (dicomweb-client), with no, basic or bearer authentication.

    dicomweb-client's own retrying is switched off: the outbox retries with its backoff, so a
    down server never holds the outbox thread. An HTTP error, or a STOW response whose Failed SOP
    Sequence names the instance, raises :class:`DeliveryError` with the server's reason.
    """

    def __init__(self, config: DicomwebDestination) -> None:
        self.config = config

    def send(self, path: Path) -> None:
        """POST one instance to ``<url>/studies``."""
        c = self.config
        try:
            dataset = pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            raise DeliveryError(f"STOW-RS to {c.name}: cannot read {path.name}: {e}") from e
        client = DICOMwebClient(c.url, session=self._session(), timeout=c.timeout_s)
        client.set_http_retry_params(retry=False)
        try:
            response = client.store_instances([dataset])
        except requests.HTTPError as e:
            raise DeliveryError(f"STOW-RS to {c.name} ({c.url}): {_http_problem(e)}") from e
        except requests.RequestException as e:
            raise DeliveryError(f"STOW-RS to {c.name} ({c.url}): {type(e).__name__}: {e}") from e
        failed = _failed_instances(response)
        if failed:
            raise DeliveryError(f"STOW-RS to {c.name} ({c.url}) refused {'; '.join(failed)}")

    def _session(self) -> requests.Session:
        session = requests.Session()
        if self.config.auth == "basic":
            session.auth = (self.config.username, self.config.secret())
        elif self.config.auth == "bearer":
            session.headers["Authorization"] = f"Bearer {self.config.secret()}"
        return session


def _http_problem(error: requests.HTTPError) -> str:
    """Status and, when the server sent a STOW response, the instances it refused and why."""
    response = error.response
    if response is None:
        return str(error)
    detail = ""
    if response.headers.get("Content-Type", "").startswith(("application/dicom+json", "application/json")):
        try:
            detail = "; ".join(_failed_instances(Dataset.from_json(response.json())))
        except (ValueError, TypeError, KeyError):
            detail = ""
    return f"HTTP {response.status_code} {response.reason}" + (f": {detail}" if detail else "")


def _failed_instances(response: Dataset) -> list[str]:
    """``<SOPInstanceUID> (FailureReason 0xNNNN)`` for each item of a STOW response's FailedSOPSequence."""
    out = []
    for item in response.get("FailedSOPSequence", []):
        reason = item.get("FailureReason")
        code = f"0x{int(reason):04X}" if reason is not None else "unknown"
        out.append(f"{item.get('ReferencedSOPInstanceUID', '?')} (FailureReason {code})")
    return out


class FolderSender:
    """Copy into a folder (atomically: temp name, then rename)."""

    def __init__(self, config: FolderDestination) -> None:
        self.config = config

    def send(self, path: Path) -> None:
        target = self.config.path / path.name
        try:
            self.config.path.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(path, tmp)
            tmp.replace(target)
        except OSError as e:
            raise DeliveryError(f"copy to {self.config.path}: {e}") from e


SENDERS: dict[type, type] = {
    DicomDestination: DicomSender,
    DicomwebDestination: DicomwebSender,
    FolderDestination: FolderSender,
    XnatDestination: XnatSender,
}


def sender_for(
    config: DicomDestination | DicomwebDestination | FolderDestination | XnatDestination,
) -> Sender:
    """The sender for a destination config (by its type)."""
    return SENDERS[type(config)](config)  # type: ignore[no-any-return]
