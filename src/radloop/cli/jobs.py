"""``radloop jobs …``: pipeline jobs (list and show read; retry and cancel write)."""

from __future__ import annotations

import typer

from radloop import services
from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import emit, table, write_json

app = typer.Typer(help="Pipeline jobs.", no_args_is_help=True)


@app.command("list")
def jobs_list(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    state: str | None = None,
    pipeline: str | None = None,
    limit: int = 100,
) -> None:
    """Jobs, newest first."""
    rows = services.list_jobs(options.runtime(config, migrate=False).engine, state, pipeline, limit)
    emit(rows, as_json, ["id", "pipeline", "state", "priority", "attempts", "created_at", "error"], "Jobs")


@app.command("show")
def jobs_show(job_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """One job: state, error, per-operator timings and logs, results."""
    job = services.get_job(options.runtime(config, migrate=False).engine, job_id)
    if as_json:
        write_json(job)
        return
    table([job], ["id", "pipeline", "state", "attempts", "max_attempts", "worker", "error"], f"Job {job_id}")
    table(job.steps, ["attempt", "operator_id", "operator", "state", "duration_s", "error"], "Steps")
    table(job.results, ["kind", "sop_instance_uid", "series_instance_uid"], "Results")


@app.command("retry")
def jobs_retry(job_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Re-queue a failed, cancelled or succeeded job."""
    runtime = options.runtime(config, migrate=True)
    row = services.retry_job(runtime.engine, job_id, runtime.settings.workers.max_attempts)
    emit(row, as_json, ["id", "pipeline", "state", "attempts", "max_attempts"], "Re-queued")


@app.command("cancel")
def jobs_cancel(job_id: int, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel a queued or running job."""
    row = services.cancel_job(options.runtime(config, migrate=True).engine, job_id)
    emit(row, as_json, ["id", "pipeline", "state"], "Cancelled")
