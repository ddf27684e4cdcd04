"""Where results go. Destination config is a discriminated union on ``kind`` (see settings);
each config type maps to one sender class, registered explicitly in :data:`SENDERS`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from radloop.connector.scu import send_files
from radloop.core.errors import DeliveryError
from radloop.core.settings import DicomDestination, FolderDestination


class Sender(Protocol):
    """Delivers one DICOM file; raises :class:`DeliveryError` on failure (the outbox retries)."""

    def send(self, path: Path) -> None: ...


class DicomSender:
    """C-STORE to a DICOM peer."""

    def __init__(self, config: DicomDestination) -> None:
        self.config = config

    def send(self, path: Path) -> None:
        c = self.config
        report = send_files([path], c.host, c.port, c.ae_title, c.calling_ae_title, timeout_s=c.timeout_s)
        if report.failed:
            raise DeliveryError(f"C-STORE to {c.ae_title}@{c.host}:{c.port}: {report.failed[0][1]}")


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
    FolderDestination: FolderSender,
}


def sender_for(config: DicomDestination | FolderDestination) -> Sender:
    """The sender for a destination config (by its type)."""
    return SENDERS[type(config)](config)  # type: ignore[no-any-return]
