"""``export_dataset``: reviewed results of a pipeline → a training dataset folder.

The one service behind ``radloop export dataset`` and ``POST /api/exports``:

1. read the folder's state (:mod:`.state`), refusing a folder made with other settings;
2. select the reviewed cases (:func:`.cases.select_cases`) and plan: cases not in the folder
   yet, or re-reviewed since, are converted; cases re-reviewed into a decision not asked for
   are removed; the rest stay as they are;
3. give every patient a side (:func:`.splits.assign_splits`; earlier sides are kept);
4. per case: source series → NIfTI image, label SEG → NIfTI label on the same grid
   (:mod:`.nifti`, :mod:`.labels`), and a provenance manifest (:mod:`.manifest`);
5. write the format's index files and the state; return an :class:`ExportSummary`.

A case that cannot be converted (unreadable series or SEG) is reported in the summary and
left out; the others go on. Re-running an export is idempotent: the same reviews, key and
settings give the same files, byte for byte.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from radloop.core import atna
from radloop.core.db import session_scope
from radloop.core.errors import ExportError, InputDataError
from radloop.core.models import ReviewDecision
from radloop.core.settings import Settings
from radloop.pipelines.volume import load_volume
from radloop.training_export.cases import DEFAULT_DECISIONS, CaseSelection, ReviewedCase, select_cases
from radloop.training_export.deid import Pseudonymizer
from radloop.training_export.formats import (
    CaseFiles,
    DatasetFormat,
    DatasetIndex,
    DatasetInfo,
    ExportFormat,
    default_dataset_name,
)
from radloop.training_export.labels import agreement, check_labels, read_seg, to_dataset_values
from radloop.training_export.manifest import CaseRecord, provenance, provenance_path
from radloop.training_export.nifti import canonical_reorientation, image_nifti, label_nifti, write_nifti_gz
from radloop.training_export.registry import dataset_format
from radloop.training_export.splits import Split, assign_splits, validation_target
from radloop.training_export.state import (
    STATE_FILE,
    ExportedCase,
    ExportSettingsRecord,
    ExportState,
    claim_folder,
    exclusive_folder,
    load_state,
    write_json,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called with (cases done, cases to convert): once with 0 before the first case, then after each."""


@dataclass(frozen=True)
class ExportRequest:
    """What to export, in which format, where; validated at construction."""

    pipeline: str
    out_dir: Path
    format: ExportFormat
    decisions: frozenset[ReviewDecision] = DEFAULT_DECISIONS
    since: datetime | None = None
    val_fraction: float = 0.2
    seed: int = 0
    dataset_name: str = ""
    dataset_id: int = 500
    requested_by: str = "unknown"  # who asked (a token, an OS user): the Export audit message's user

    def __post_init__(self) -> None:
        validation_target(2, self.val_fraction)  # raises for a fraction outside [0, 1)
        CaseSelection(self.pipeline, self.decisions, self.since)  # checks pipeline, decisions, since
        _ = self.info  # checks the dataset name and id

    @property
    def info(self) -> DatasetInfo:
        """Name (default: from the pipeline), id and description of the dataset."""
        name = self.dataset_name or default_dataset_name(self.pipeline)
        return DatasetInfo(name, self.dataset_id, f"Reviewed results of the radloop pipeline {self.pipeline}")


@dataclass
class ExportSummary:
    """What an export did (this run) and what the folder now holds (all runs)."""

    dataset_root: Path
    format: ExportFormat
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    cases: dict[str, dict[str, int]] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for the CLI's ``--json`` and the API."""
        return {
            "dataset_root": str(self.dataset_root),
            "format": self.format.value,
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": [{"case": c, "error": e} for c, e in self.failed],
            "cases": self.cases,
            "patients": self.patients,
        }


@dataclass
class _Plan:
    """Cases to convert (by case id), cases to remove, and how many stay as they are."""

    todo: dict[str, ReviewedCase] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    updated: int = 0


def export_dataset(
    settings: Settings, engine: Engine, request: ExportRequest, on_progress: ProgressCallback | None = None
) -> ExportSummary:
    """Export the reviewed results of ``request.pipeline``; see the module docstring."""
    fmt = dataset_format(request.format)
    root = fmt.dataset_root(request.out_dir, request.info)
    with exclusive_folder(root):
        return _export_locked(settings, engine, request, fmt, root, on_progress)


def _export_locked(
    settings: Settings,
    engine: Engine,
    request: ExportRequest,
    fmt: DatasetFormat,
    root: Path,
    on_progress: ProgressCallback | None,
) -> ExportSummary:
    """:func:`export_dataset` while holding the folder's lock."""
    ids = Pseudonymizer.from_settings(settings)
    state = load_state(root, _settings_record(request, ids))
    selection = CaseSelection(request.pipeline, request.decisions, request.since)
    plan = _plan(select_cases(engine, settings.data_dir, selection), state, selection, ids)
    if not state.cases and not plan.todo:
        raise ExportError(_nothing_to_export(request))
    claim_folder(root, state)
    _remove_cases(root, fmt, state, plan.removed)
    patients = {c.patient for c in state.cases.values()} | {
        ids.patient(c.patient_key) for c in plan.todo.values()
    }
    previous = {p: side for p, side in state.patients.items() if p in patients}
    state.patients = assign_splits(patients, previous, request.val_fraction, request.seed)
    summary = ExportSummary(root, request.format, unchanged=plan.unchanged, removed=len(plan.removed))
    _convert_all(plan, state, fmt, root, ids, summary, on_progress)
    summary.updated = plan.updated - sum(1 for c, _ in summary.failed if c in state.cases)
    summary.new = len(plan.todo) - len(summary.failed) - summary.updated
    _finish(root, fmt, request.info, state)
    _count(state, summary)
    failed = {c for c, _ in summary.failed}
    exported = [case.series.StudyInstanceUID for cid, case in plan.todo.items() if cid not in failed]
    if exported:  # PS3.15 A.5.3.7 Export: the studies whose data left radloop in this run
        with session_scope(engine) as s:
            message = atna.export(s, atna.person(request.requested_by), str(root), exported)
            atna.record(s, settings.audit, message)
    log.info(
        "exported %s: %d new, %d updated, %d unchanged, %d removed, %d failed",
        root,
        summary.new,
        summary.updated,
        summary.unchanged,
        summary.removed,
        len(summary.failed),
    )
    return summary


def _nothing_to_export(request: ExportRequest) -> str:
    """Why a first export made nothing (no folder is created for an empty dataset)."""
    since = f" decided since {request.since.isoformat()}" if request.since else ""
    decisions = ", ".join(sorted(d.value for d in request.decisions))
    return f"no reviewed results of pipeline {request.pipeline!r} with decision {decisions}{since} to export"


def _settings_record(request: ExportRequest, ids: Pseudonymizer) -> ExportSettingsRecord:
    """The settings that must match between exports into one folder."""
    return ExportSettingsRecord(
        format=request.format.value,
        pipeline=request.pipeline,
        dataset_name=request.info.name,
        dataset_id=request.dataset_id,
        decisions=tuple(sorted(d.value for d in request.decisions)),
        seed=request.seed,
        val_fraction=request.val_fraction,
        key_fingerprint=ids.fingerprint,
    )


def _plan(
    cases: list[ReviewedCase], state: ExportState, selection: CaseSelection, ids: Pseudonymizer
) -> _Plan:
    """Sort the selected cases into new or re-reviewed (convert), no longer wanted (remove), unchanged."""
    plan = _Plan()
    for case in cases:
        case_id = ids.case(ids.patient(case.patient_key), case.ai_sop_instance_uid)
        exported = state.cases.get(case_id)
        if not selection.wants(case):
            if exported is not None:
                plan.removed.append(case_id)
            continue
        if exported is not None and exported.review == _review_token(case, ids):
            plan.unchanged += 1
            continue
        plan.updated += exported is not None
        plan.todo[case_id] = case
    plan.todo = dict(sorted(plan.todo.items()))
    return plan


def _review_token(case: ReviewedCase, ids: Pseudonymizer) -> str:
    """Names the review decision a case shows (a re-review gives another token)."""
    return ids.review(case.review_id, case.decided_at.astimezone(UTC).isoformat())


def _remove_cases(root: Path, fmt: DatasetFormat, state: ExportState, case_ids: list[str]) -> None:
    """Delete the files of cases re-reviewed into a decision the export does not take."""
    for case_id in case_ids:
        for rel in (fmt.image_path(case_id), fmt.label_path(case_id), provenance_path(case_id)):
            (root / rel).unlink(missing_ok=True)
        del state.cases[case_id]
        log.info("removed case %s: re-reviewed into a decision this export does not take", case_id)


def _convert_all(
    plan: _Plan,
    state: ExportState,
    fmt: DatasetFormat,
    root: Path,
    ids: Pseudonymizer,
    summary: ExportSummary,
    on_progress: ProgressCallback | None,
) -> None:
    """Convert every planned case, reporting progress; a case that fails is reported and left out."""
    total = len(plan.todo)
    if on_progress is not None:
        on_progress(0, total)
    for done, (case_id, case) in enumerate(plan.todo.items(), start=1):
        try:
            record = _convert_case(case, case_id, state, fmt, root, ids)
        except (ExportError, InputDataError) as e:
            log.warning("case %s not exported: %s", case_id, e)
            summary.failed.append((case_id, str(e)))
        else:
            write_json(root / provenance_path(case_id), provenance(case, record, ids, state.labels))
            state.cases[case_id] = ExportedCase(
                ids.patient(case.patient_key), case.decision.value, _review_token(case, ids)
            )
        if on_progress is not None:
            on_progress(done, total)
    kept = {c.patient for c in state.cases.values()}
    state.patients = {p: side for p, side in state.patients.items() if p in kept}


def _convert_case(
    case: ReviewedCase, case_id: str, state: ExportState, fmt: DatasetFormat, root: Path, ids: Pseudonymizer
) -> CaseRecord:
    """Write the image and label NIfTI files of one case; return what its manifest needs."""
    volume = load_volume(case.source_paths, case.series)
    _check_modality(state, volume.modality or case.modality, case_id)
    ai = read_seg(case.ai_seg_path, volume)
    if not state.labels:
        state.labels = ai.segments
    check_labels(state.labels, ai.segments, f"case {case_id} (AI SEG)")
    ai_values = to_dataset_values(ai, state.labels, f"case {case_id} (AI SEG)")
    final_values = ai_values
    if case.final_seg_path is not None:
        final_values = to_dataset_values(
            read_seg(case.final_seg_path, volume), state.labels, f"case {case_id}"
        )
    reorientation = canonical_reorientation(volume)
    image_rel, label_rel = fmt.image_path(case_id), fmt.label_path(case_id)
    write_nifti_gz(image_nifti(volume, reorientation), root / image_rel)
    write_nifti_gz(label_nifti(final_values, reorientation), root / label_rel)
    rejected = case.decision == ReviewDecision.rejected
    shape = reorientation.apply(final_values).shape
    return CaseRecord(
        case_id=case_id,
        split=state.patients[ids.patient(case.patient_key)],
        image=image_rel,
        label=label_rel,
        model_name=case.model_name or ai.algorithm_name,
        model_version=case.model_version or ai.algorithm_version,
        agreement=None if rejected else agreement(ai_values, final_values, state.labels),
        voxels_ai={label.name: int((ai_values == label.value).sum()) for label in state.labels},
        voxels_final={label.name: int((final_values == label.value).sum()) for label in state.labels},
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        spacing_mm=reorientation.spacing,
        images=len(volume.source_paths),
    )


def _check_modality(state: ExportState, modality: str, case_id: str) -> None:
    """One dataset has one image channel: every case has the modality of the first."""
    if not state.modality:
        state.modality = modality
    elif modality != state.modality:
        raise ExportError(
            f"case {case_id} is {modality}, the dataset is {state.modality}: one modality per dataset"
        )


def _finish(root: Path, fmt: DatasetFormat, info: DatasetInfo, state: ExportState) -> None:
    """Write the format's index files, then the state (last: a crash before it just redoes the run)."""
    sides: dict[Split, list[CaseFiles]] = {Split.training: [], Split.validation: []}
    for case_id, entry in sorted(state.cases.items()):
        files = CaseFiles(case_id, fmt.image_path(case_id), fmt.label_path(case_id))
        sides[state.patients[entry.patient]].append(files)
    index = DatasetIndex(
        info, state.labels, state.modality, tuple(sides[Split.training]), tuple(sides[Split.validation])
    )
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in fmt.index_files(index).items():
        if content is None:
            (root / rel).unlink(missing_ok=True)
        else:
            write_json(root / rel, content)
    write_json(root / STATE_FILE, state.to_json())


def _count(state: ExportState, summary: ExportSummary) -> None:
    """Cases per side and decision, and patients per side, over the whole folder."""
    table: dict[str, Counter[str]] = {side.value: Counter() for side in Split}
    for entry in state.cases.values():
        table[state.patients[entry.patient].value][entry.decision] += 1
    summary.cases = {
        side: {d.value: counts[d.value] for d in ReviewDecision} for side, counts in table.items()
    }
    summary.patients = {side.value: sum(1 for s in state.patients.values() if s == side) for side in Split}
