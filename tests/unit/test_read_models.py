"""One shape per entity: services return read models, the API and ``--json`` show the same JSON,
and internal columns (lease owner, idempotency key, file path, token hash) never leave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from radloop import services
from radloop.api.app import create_app
from radloop.cli import app as cli
from radloop.core import db
from radloop.core.db import session_scope
from radloop.core.models import Delivery, Job, JobState, JobStep, Result, Series, SeriesState, Study
from radloop.core.read_models import JobDetail, StudyOut
from radloop.core.settings import Settings, load_settings

runner = CliRunner()
INTERNAL = {"leased_by", "idempotency_key", "priority_rank", "path", "token_hash", "study_id"}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Engine, dict[str, int]]:
    """A database with one study, series, failed job (one step, one result) and pending delivery."""
    monkeypatch.setenv("RADLOOP_DATA_DIR", str(tmp_path))
    settings = load_settings(data_dir=str(tmp_path))
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with session_scope(engine) as s:
        study = Study(study_instance_uid="1.2.3", patient_id="P1")
        s.add(study)
        s.flush()
        assert study.id is not None
        series = Series(
            study_id=study.id, series_instance_uid="1.2.3.4", modality="MR", state=SeriesState.complete
        )
        s.add(series)
        s.flush()
        assert series.id is not None
        job = Job(
            pipeline="p",
            series_id=series.id,
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.4",
            idempotency_key="k",
            state=JobState.failed,
            leased_by="worker-1",
            error="boom",
        )
        s.add(job)
        s.flush()
        assert job.id is not None
        s.add(
            JobStep(
                job_id=job.id,
                attempt=1,
                operator_id="volume",
                operator="series_to_volume",
                state="failed",
                duration_s=0.5,
                log="line\n",
                error="boom",
            )
        )
        result = Result(job_id=job.id, kind="SEG", sop_instance_uid="1.2.3.4.5.6", path="results/x.dcm")
        s.add(result)
        s.flush()
        assert result.id is not None
        delivery = Delivery(result_id=result.id, destination="pacs", last_error="refused")
        s.add(delivery)
        s.flush()
        assert delivery.id is not None
        ids = {"job": job.id, "delivery": delivery.id}
    return settings, engine, ids


def _cli_json(*args: str) -> Any:
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _keys(data: Any) -> set[str]:
    """Every key anywhere in ``data``."""
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in _keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in _keys(v)}
    return set()


def test_services_return_read_models_without_internal_columns(
    site: tuple[Settings, Engine, dict[str, int]],
) -> None:
    _, engine, ids = site
    job = services.get_job(engine, ids["job"])
    assert isinstance(job, JobDetail)
    shown = job.model_dump(mode="json")
    assert shown["state"] == "failed" and shown["priority"] == "normal"  # enums as their values
    assert isinstance(shown["created_at"], str) and shown["lease_until"] is None  # datetimes as ISO text
    assert [s["operator_id"] for s in shown["steps"]] == ["volume"] and shown["steps"][0]["duration_s"] == 0.5
    assert [r["kind"] for r in shown["results"]] == ["SEG"]
    assert not _keys(shown) & INTERNAL
    (study,) = services.list_studies(engine)
    assert isinstance(study, StudyOut)
    assert [se.study_instance_uid for se in study.series] == ["1.2.3"]  # nested series name their study
    assert not _keys(study.model_dump(mode="json")) & INTERNAL
    made = services.create_token(engine, "machine")
    listed = [t.model_dump(mode="json") for t in services.list_tokens(engine)]
    assert made.token and made.active and listed[0]["name"] == "machine" and listed[0]["active"] is True
    assert not _keys(listed) & ({"token"} | INTERNAL)


def test_api_and_cli_show_the_same_json(site: tuple[Settings, Engine, dict[str, int]]) -> None:
    settings, engine, ids = site
    token = services.create_token(engine, "read-models", ["operator"]).token
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as client:
        for path, command in [
            (f"/api/v1/jobs/{ids['job']}", ["jobs", "show", str(ids["job"])]),
            ("/api/v1/jobs", ["jobs", "list"]),
            ("/api/v1/studies", ["studies", "list"]),
            ("/api/v1/deliveries", ["deliveries", "list"]),
            ("/api/v1/pipelines", ["pipelines", "list"]),
        ]:
            answer = client.get(path, headers=auth)
            assert answer.status_code == 200, answer.text
            assert answer.json() == _cli_json(*command), path
        dismissed = _cli_json("deliveries", "dismiss", str(ids["delivery"]))
        assert (
            dismissed["state"] == "dismissed"
            and dismissed["kind"] == "SEG"
            and dismissed["job_id"] == ids["job"]
        )
        retried = client.post(f"/api/v1/deliveries/{ids['delivery']}/retry", headers=auth).json()
        assert retried["state"] == "pending" and retried["sop_instance_uid"] == "1.2.3.4.5.6"
        assert retried == services.list_deliveries(engine)[0].model_dump(mode="json")


def test_cli_tables_print_read_models(site: tuple[Settings, Engine, dict[str, int]]) -> None:
    _, _, ids = site
    for command, shown in [
        (["jobs", "show", str(ids["job"])], "series_to_volume"),
        (["studies", "list"], "1.2.3.4"),
        (["jobs", "list"], "failed"),
        (["deliveries", "list"], "refused"),
        (["pipelines", "list"], "ct-organ-seg"),
        (["tokens", "create", "table-test"], "shown only now"),
        (["tokens", "list"], "table-test"),
    ]:
        result = runner.invoke(cli, command)
        assert result.exit_code == 0, result.output
        assert shown in result.output, (command, result.output)
