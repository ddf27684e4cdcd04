"""Runs one job: its pipeline's operators in order (the step loop of :mod:`.steps`), each timed,
with its stage timings and log lines, into ``job_step`` rows; then records the DICOM objects
written as results and queues their deliveries (the outbox). SEGs of model versions staged
``shadow`` (:mod:`.shadow`) are stored as results of kind ``shadow-seg`` with no delivery.

A study-level job (``trigger: study``) gets its series by input name from its ``job_input`` rows;
its ``prior`` inputs are searched and retrieved here, through the :class:`~radloop.pipelines.priors.
PriorLookup` the runtime hands in, and recorded as ``job_input`` rows too (a retry reuses them).

Results are idempotent: writers take their UIDs from the job's idempotency key, so a retried
or resumed job rewrites the same SOP Instance UIDs and finds its result and delivery rows
already there instead of adding new ones.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy.engine import Engine
from sqlmodel import select

from radloop.core.db import series_instances, session_scope
from radloop.core.errors import ConfigError, JobError, NotFoundError, PermanentJobError
from radloop.core.models import (
    Delivery,
    Job,
    JobInput,
    JobState,
    JobStep,
    Result,
    Series,
    Study,
    utcnow,
)
from radloop.core.refs import SeriesRef
from radloop.core.settings import Settings
from radloop.inference.resolve import ModelResolver, ModelSource
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.ports import DicomObjects, SeriesInput
from radloop.pipelines.priors import PriorLookup
from radloop.pipelines.registry import OperatorContext
from radloop.pipelines.shadow import SHADOW_KIND, shadow_files
from radloop.pipelines.spec import BoundStep, Pipeline
from radloop.pipelines.steps import PipelineInputs, run_steps, written_objects

log = logging.getLogger(__name__)


class JobCancelled(JobError):
    """The job was cancelled while it ran; it stops at the next operator boundary."""

    transient = False


class JobRunner:
    """Executes jobs of the pipelines in ``catalog`` against the store and database."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        catalog: PipelineCatalog,
        priors: PriorLookup | None = None,
        models: ModelSource | None = None,
    ) -> None:
        """``models``: a worker's warm model cache (:attr:`radloop.runtime.Runtime.models`); by
        default a resolver of its own. Either way backends outlive jobs: a model loads once."""
        self.settings = settings
        self.engine = engine
        self.catalog = catalog
        self.priors = priors
        self.models: ModelSource = models if models is not None else ModelResolver.from_settings(settings)

    def run(self, job_id: int) -> list[int]:
        """Run the job (which the caller has claimed); returns the ids of its result rows."""
        with session_scope(self.engine) as s:
            job = s.get(Job, job_id)
            if job is None:
                raise PermanentJobError(f"job {job_id} does not exist")
        try:
            pipeline = self.catalog.get(job.pipeline)
        except ConfigError as e:
            raise PermanentJobError(str(e)) from e
        series_input = self._inputs(job, pipeline)
        job_dir = self.settings.data_dir / "jobs" / str(job_id)
        shutil.rmtree(job_dir, ignore_errors=True)  # scratch of earlier attempts, even of a killed one
        workdir = job_dir / f"attempt-{job.attempts}"
        workdir.mkdir(parents=True)
        ctx = OperatorContext(
            job_id=job_id,
            idempotency_key=job.idempotency_key,
            workdir=workdir,
            pipeline_name=pipeline.name,
            pipeline_version=pipeline.spec.version,
            models=self.models,
        )
        try:
            values = run_steps(pipeline, series_input, ctx, partial(self._recorded_step, job))
            results = self._record_results(job, pipeline, written_objects(values))
            return results + self._record_shadow(job, workdir)
        finally:
            # Scratch only: results were copied into ``results/``; a failed attempt (a full disk)
            # must not leave half-written objects behind.
            shutil.rmtree(job_dir, ignore_errors=True)

    def _record_shadow(self, job: Job, workdir: Path) -> list[int]:
        """Store the SEGs of shadow model versions as results, with no delivery (never sent)."""
        with session_scope(self.engine) as s:
            return [
                self._store_result(s, job, SHADOW_KIND, path).id  # type: ignore[misc]
                for path in shadow_files(workdir)
            ]

    def _inputs(self, job: Job, pipeline: Pipeline) -> PipelineInputs:
        """``input.series`` of a series-level job; the named inputs (None if absent) of a study-level one."""
        if pipeline.spec.trigger == "series":
            with session_scope(self.engine) as s:
                return self._series_input(s, job, job.series_id)
        self._resolve_priors(job, pipeline)
        with session_scope(self.engine) as s:
            rows = {r.name: r for r in s.exec(select(JobInput).where(JobInput.job_id == job.id)).all()}
            named: dict[str, SeriesInput | None] = {name: None for name in pipeline.spec.inputs}
            for name, row in rows.items():
                if name in named:
                    named[name] = self._series_input(s, job, row.series_id)
        missing = [n for n, r in pipeline.spec.inputs.items() if r.required and named[n] is None]
        if missing:
            raise PermanentJobError(f"job {job.id}: required input(s) {missing} have no series")
        return named

    def _resolve_priors(self, job: Job, pipeline: Pipeline) -> None:
        """Find and retrieve each prior input not found by an earlier attempt; record it as a job_input."""
        for name, rule in pipeline.spec.prior_inputs().items():
            assert rule.prior is not None
            with session_scope(self.engine) as s:
                done = s.exec(
                    select(JobInput).where(JobInput.job_id == job.id, JobInput.name == name)
                ).first()
            if done is not None:
                continue
            if self.priors is None:
                log.warning("job %s: no prior lookup configured; input %s is absent", job.id, name)
                continue
            try:
                series_id = self.priors.find_prior(job.study_instance_uid, rule.prior)
            except NotFoundError as e:  # the pipeline names a source that is not configured
                raise PermanentJobError(f"input {name}: {e}") from e
            if series_id is None:
                log.info("job %s: no prior found for input %s (source %s)", job.id, name, rule.prior.source)
                continue
            with session_scope(self.engine) as s:
                series = s.get(Series, series_id)
                study = s.get(Study, series.study_id) if series else None
                s.add(
                    JobInput(
                        job_id=job.id,  # type: ignore[arg-type]
                        name=name,
                        series_id=series_id,
                        study_instance_uid=study.study_instance_uid if study else "",
                        series_instance_uid=series.series_instance_uid if series else "",
                        prior=True,
                    )
                )

    def _series_input(self, s: Any, job: Job, series_id: int) -> SeriesInput:
        series = s.get(Series, series_id)
        if series is None:
            raise PermanentJobError(f"series {series_id} of job {job.id} no longer exists")
        study = s.get(Study, series.study_id)
        instances = series_instances(s, series_id)
        if not instances:
            raise PermanentJobError(f"series {series.series_instance_uid} has no stored instances")
        return SeriesInput(
            ref=SeriesRef(
                study.study_instance_uid if study else job.study_instance_uid, series.series_instance_uid
            ),
            modality=series.modality,
            paths=tuple(self.settings.data_dir / i.path for i in instances),
            series_description=series.series_description,
        )

    @contextmanager
    def _recorded_step(self, job: Job, bound: BoundStep, ctx: OperatorContext) -> Iterator[None]:
        """Step hook: unless the job was cancelled, time one operator, capture its log lines and
        stage timings, and store them in a ``job_step`` row."""
        self._check_not_cancelled(job.id)  # type: ignore[arg-type]
        op_id, op_name, logger = bound.step.id, bound.step.use, ctx.logger
        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        with session_scope(self.engine) as s:
            row = JobStep(job_id=job.id, attempt=job.attempts, operator_id=op_id, operator=op_name)  # type: ignore[arg-type]
            s.add(row)
        start = time.perf_counter()
        state, error = "succeeded", ""
        try:
            yield
        except BaseException as e:
            state, error = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            logger.removeHandler(handler)
            row.duration_s = round(time.perf_counter() - start, 4)
            row.state, row.error, row.log = state, error, buffer.getvalue()[-20000:]
            row.stages = ctx.stages.rounded()
            with session_scope(self.engine) as s:
                s.merge(row)
            log.info("job %s: %s (%s) %s in %.2f s", job.id, op_id, op_name, state, row.duration_s)

    def _check_not_cancelled(self, job_id: int) -> None:
        with session_scope(self.engine) as s:
            job = s.get(Job, job_id)
            if job is None or job.state == JobState.cancelled:
                raise JobCancelled(f"job {job_id} was cancelled")

    def _record_results(self, job: Job, pipeline: Pipeline, objects: list[DicomObjects]) -> list[int]:
        result_ids: list[int] = []
        destinations = self.settings.pipelines.destinations_for(pipeline.name, pipeline.spec.destinations)
        with session_scope(self.engine) as s:
            for obj in objects:
                wanted = [d for d in destinations if self._delivers(pipeline, obj.kind, d)]
                for path in obj.paths:
                    result = self._store_result(s, job, obj.kind, path)
                    result_ids.append(result.id)  # type: ignore[arg-type]
                    for dest in wanted:
                        _ensure_delivery(s, result.id, dest)  # type: ignore[arg-type]
        return result_ids

    def _delivers(self, pipeline: Pipeline, kind: str, destination: str) -> bool:
        """Results of ``kind`` go to ``destination`` unless the pipeline or the destination's
        ``accepts`` list leaves that kind out. An unconfigured destination still gets its row, so
        the outbox shows the configuration error instead of dropping the result silently."""
        if not pipeline.spec.sends(kind, destination):
            return False
        try:
            return self.settings.destination(destination).takes(kind)
        except ConfigError:
            return True

    def _store_result(self, s: Any, job: Job, kind: str, path: Path) -> Result:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sop_uid = str(ds.SOPInstanceUID)
        rel = Path("results") / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{sop_uid}.dcm"
        target = self.settings.data_dir / rel
        _copy_atomically(path, target)
        result = s.exec(select(Result).where(Result.sop_instance_uid == sop_uid)).first()
        if result is None:
            assert job.id is not None
            result = Result(
                job_id=job.id,
                kind=kind,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=sop_uid,
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                path=str(rel),
                created_at=utcnow(),
            )
            s.add(result)
            s.flush()
        return result  # type: ignore[no-any-return]


def _copy_atomically(source: Path, target: Path) -> None:
    """Copy through a temporary file and a rename: ``target`` is absent or complete, and a failed
    copy (a full disk) leaves no temporary file behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    try:
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _ensure_delivery(s: Any, result_id: int, destination: str) -> None:
    exists = s.exec(
        select(Delivery).where(Delivery.result_id == result_id, Delivery.destination == destination)
    ).first()
    if exists is None:
        s.add(Delivery(result_id=result_id, destination=destination))
