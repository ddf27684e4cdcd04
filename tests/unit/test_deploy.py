"""deploy/: the Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, strict,
offline with its bundled schemas), and the compose file, systemd units and example settings
checked for what radloop needs. No cluster and no Docker engine here: nothing is applied."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from radloop.core.settings import load_settings
from radloop.node_roles import ROLES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
STRONG_KEY = "x9V2qLr7Tz0Kp4Wm8Yc1Nd6Hs3Jf5Bg0"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in _docs(path):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_validator_catches_a_mistake() -> None:
    (deployment,) = _docs(K8S / "outbox.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_manifests_cover_every_role_with_probes_pvc_secret_and_gpu() -> None:
    docs = _manifests()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("PersistentVolumeClaim", "radloop-data") in kinds
    assert ("Secret", "radloop-secrets") in kinds
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    roles = ("ingest", "api", "outbox", "worker-cpu", "worker-gpu")
    assert set(deployments) == {f"radloop-{r}" for r in roles}
    for d in deployments.values():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        assert "livenessProbe" in c and "readinessProbe" in c
        assert {"name": "data", "mountPath": "/srv/radloop"} in c["volumeMounts"]
        assert c["envFrom"] == [{"secretRef": {"name": "radloop-secrets"}}]
    gpu = deployments["radloop-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "gpu" in gpu["args"][gpu["args"].index("--queues") + 1].split(",")


def _settings_of(text: str) -> Any:
    overrides = {"secret_key": STRONG_KEY, "database": {"url": "postgresql+psycopg://u@db/radloop"}}
    return load_settings(None, **{**yaml.safe_load(text), **overrides})


def test_example_settings_load() -> None:
    (configmap,) = _docs(K8S / "configmap.yaml")
    for text in (
        configmap["data"]["radloop.yaml"],
        (DEPLOY / "compose" / "radloop.yaml").read_text(),
        (DEPLOY / "systemd" / "radloop.yaml.example").read_text(),
    ):
        settings = _settings_of(text)
        assert settings.workers.executor == "celery"
        assert all(not lst.complete_on_release for lst in settings.dicom.listeners)


def test_compose_has_the_peers_and_one_service_per_role() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    peers = {"postgres", "rabbitmq", "orthanc", "triton"}
    assert peers | {"ingest", "api", "outbox", "worker-cpu", "worker-gpu"} <= set(services)
    for name in ("ingest", "api", "outbox"):
        assert services[name]["command"] == ["radloop", "serve", "--role", name]
    (device,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_systemd_units_run_the_roles() -> None:
    for role in ("ingest", "api", "outbox"):
        unit = configparser.ConfigParser(interpolation=None, strict=False)
        unit.read(DEPLOY / "systemd" / f"radloop-{role}.service")
        assert unit["Service"]["ExecStart"].endswith(f"radloop serve --role {role}")
        assert role in ROLES
    worker = configparser.ConfigParser(interpolation=None, strict=False)
    worker.read(DEPLOY / "systemd" / "radloop-worker@.service")
    assert "radloop worker --queues %i" in worker["Service"]["ExecStart"]
