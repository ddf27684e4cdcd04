"""The export state file ``radloop-export.json``, kept in the dataset folder.

It is what makes exports incremental: the settings the folder was made with (format, pipeline,
decisions, seed, validation fraction, dataset name, labels, key fingerprint), every patient's
side, and every exported case with the review decision it shows. A later export into the same
folder refuses other settings, converts only cases that are new or were re-reviewed since,
and keeps every patient's side. The state lives with the data (not in radloop's database) so
that the folder a data scientist keeps or copies says itself how it was made; it holds
pseudonyms only, and no time stamps, so re-running an export changes no byte of it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radloop.core.errors import ExportError
from radloop.training_export.labels import DatasetLabel
from radloop.training_export.splits import Split

STATE_FILE = "radloop-export.json"
STATE_VERSION = 1
LOCK_FILE = ".radloop-export.lock"
"""Held (``flock``) while an export writes the folder; removed when it is done."""


@dataclass(frozen=True)
class ExportedCase:
    """One case in the folder: its patient, decision, and the token of the review it shows."""

    patient: str
    decision: str
    review: str

    def to_json(self) -> dict[str, str]:
        """As stored in the state file."""
        return {"patient": self.patient, "decision": self.decision, "review": self.review}


@dataclass(frozen=True)
class ExportSettingsRecord:
    """What must be equal between the exports that fill one folder."""

    format: str
    pipeline: str
    dataset_name: str
    dataset_id: int
    decisions: tuple[str, ...]
    seed: int
    val_fraction: float
    key_fingerprint: str

    def differences(self, other: ExportSettingsRecord) -> list[str]:
        """``name: folder value != requested value`` for each setting that differs."""
        return [
            f"{name}: the folder has {getattr(self, name)!r}, this export asks for {getattr(other, name)!r}"
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass
class ExportState:
    """The mutable state of one dataset folder during an export."""

    settings: ExportSettingsRecord
    modality: str = ""
    labels: tuple[DatasetLabel, ...] = ()
    patients: dict[str, Split] = field(default_factory=dict)
    cases: dict[str, ExportedCase] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The state file's content (keys sorted when written)."""
        return {
            "radloop_export_version": STATE_VERSION,
            "settings": {**self.settings.__dict__, "decisions": list(self.settings.decisions)},
            "modality": self.modality,
            "labels": [label.to_json() for label in self.labels],
            "patients": {p: side.value for p, side in sorted(self.patients.items())},
            "cases": {c: entry.to_json() for c, entry in sorted(self.cases.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportState:
        """Inverse of :meth:`to_json`."""
        if data.get("radloop_export_version") != STATE_VERSION:
            raise ExportError(
                f"{STATE_FILE} has version {data.get('radloop_export_version')!r}, not {STATE_VERSION}"
            )
        raw = dict(data["settings"])
        raw["decisions"] = tuple(raw["decisions"])
        return cls(
            settings=ExportSettingsRecord(**raw),
            modality=str(data.get("modality", "")),
            labels=tuple(DatasetLabel.from_json(x) for x in data.get("labels", [])),
            patients={p: Split(side) for p, side in data.get("patients", {}).items()},
            cases={c: ExportedCase(**entry) for c, entry in data.get("cases", {}).items()},
        )


def load_state(root: Path, requested: ExportSettingsRecord) -> ExportState:
    """The folder's state if it has one made with the same settings; a new state for an empty folder.

    Raises :class:`ExportError` for a folder made with other settings, or for a folder that
    holds other files but no state (radloop does not write into a folder it did not make).
    """
    path = root / STATE_FILE
    if not path.exists():
        if root.exists() and any(p.name != LOCK_FILE for p in root.iterdir()):
            raise ExportError(f"{root} is not empty and holds no {STATE_FILE}: choose an empty or new folder")
        return ExportState(settings=requested)
    try:
        state = ExportState.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{path}: unreadable export state ({e})") from e
    differences = state.settings.differences(requested)
    if differences:
        raise ExportError(
            f"{root} was exported with other settings ({'; '.join(differences)}); "
            "export with the same settings to add to it, or into a new folder"
        )
    return state


def claim_folder(root: Path, state: ExportState) -> None:
    """Make the folder resumable before any case is written into it: a new folder gets a state
    file with the settings and no case yet, so that an export killed half-way is finished by the
    next run (which converts every case the state does not list) instead of being refused as a
    folder radloop did not make; and the temporary files of a killed write are removed."""
    for partial in root.rglob(".*.tmp"):
        if partial.is_file():
            partial.unlink()
    if not (root / STATE_FILE).exists():
        write_json(root / STATE_FILE, ExportState(settings=state.settings).to_json())


@contextmanager
def exclusive_folder(root: Path) -> Iterator[None]:
    """Hold the folder's lock while an export writes it: a second export into it fails at once.

    The folder is made if needed, and removed again if the export left nothing in it (an
    export that found nothing to export creates no folder).
    """
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK_FILE
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise ExportError(f"{root}: another export is writing this folder now") from e
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            if created and not any(root.iterdir()):
                root.rmdir()


def write_json(path: Path, content: Any) -> None:
    """Write ``content`` as sorted, indented JSON, atomically; the same content gives the same bytes."""
    text = json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def describe_export(root: Path) -> dict[str, Any]:
    """What a dataset folder holds, from its state file: settings, labels, cases and patients per side."""
    state = ExportState.from_json(json.loads((root / STATE_FILE).read_text()))
    cases: dict[str, int] = {side.value: 0 for side in Split}
    for entry in state.cases.values():
        cases[state.patients[entry.patient].value] += 1
    patients = {side.value: sum(1 for s in state.patients.values() if s == side) for side in Split}
    return {
        "path": str(root),
        "format": state.settings.format,
        "pipeline": state.settings.pipeline,
        "dataset": state.settings.dataset_name,
        "decisions": list(state.settings.decisions),
        "seed": state.settings.seed,
        "val_fraction": state.settings.val_fraction,
        "labels": {str(label.value): label.name for label in state.labels},
        "cases": cases,
        "patients": patients,
    }


def list_exports(folder: Path) -> list[dict[str, Any]]:
    """The dataset folders radloop made in ``folder`` (one level down; two for nnU-Net's Dataset folders)."""
    if not folder.is_dir():
        return []
    roots = sorted(
        {p.parent for p in folder.glob(f"*/{STATE_FILE}")}
        | {p.parent for p in folder.glob(f"*/*/{STATE_FILE}")}
    )
    return [describe_export(root) for root in roots]
