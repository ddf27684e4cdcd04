"""``radloop models …`` and ``radloop triton …``: argument parsing and calls, nothing more.

Kept apart from :mod:`radloop.cli` (which mounts these two apps) so that the model and Triton
commands can change without touching the main command file.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from rich.console import Console
from rich.table import Table

from radloop.core.errors import ConfigError
from radloop.core.logging import configure_logging
from radloop.core.settings import Settings, load_settings
from radloop.inference.store import ModelStore, StoredModel

models_app = typer.Typer(
    help="The versioned model store and Triton model repositories.", no_args_is_help=True
)
triton_app = typer.Typer(help="A local CPU Triton Inference Server (development, CI).", no_args_is_help=True)

console = Console()
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (else $RADLOOP_CONFIG).", envvar="RADLOOP_CONFIG"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _store(settings: Settings) -> ModelStore:
    return ModelStore(settings.inference.store_dir(settings.data_dir))


def model_row(stored: StoredModel) -> dict[str, Any]:
    """One line of ``models list``."""
    spec = stored.spec
    return {
        "name": spec.name,
        "version": spec.version,
        "format": spec.format,
        "source": spec.source,
        "task": spec.task,
        "inputs": "; ".join(f"{t.name} {t.dtype}{t.shape}" for t in spec.inputs),
        "labels": ", ".join(f"{lab.value}={lab.name}" for lab in spec.labels),
        "path": str(stored.path),
    }


def _print(rows: list[dict[str, Any]], as_json: bool, columns: list[str], title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    console.print(table)


def _read_overrides(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read spec file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"spec file {path} must hold a mapping of model spec fields")
    return data


LIST_COLUMNS = ["name", "version", "format", "source", "task", "inputs", "labels"]


@models_app.command("add")
def models_add(
    path: Annotated[Path, typer.Argument(help="An .onnx file, a TorchScript file or a MONAI bundle folder.")],
    name: Annotated[str, typer.Option("--name", help="Model name (what pipelines use).")],
    version: Annotated[str, typer.Option("--version", help="Model version; versions are immutable.")],
    spec: Annotated[
        Path | None, typer.Option("--spec", help="YAML/JSON of spec fields that override the file's.")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing version.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a model into the store, with its spec (tensors, geometry, intensity, labels)."""
    stored = _store(load_settings(config)).add(path, name, version, _read_overrides(spec), replace=replace)
    _print([model_row(stored)], as_json, [*LIST_COLUMNS, "path"], "Added")


@models_app.command("import-deepbet")
def models_import_deepbet(
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite existing versions.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy deepbet's two brain-extraction networks (from its wheel) into the store."""
    from radloop.inference.packaged import packaged_models

    store = _store(load_settings(config))
    packaged = packaged_models()
    if not packaged:
        raise ConfigError("deepbet is not installed: `pip install deepbet==1.0.2`")
    rows = [model_row(store.add_packaged(p, replace=replace)) for p in packaged.values()]
    _print(rows, as_json, LIST_COLUMNS, "Imported")


@models_app.command("list")
def models_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every version of every model in the store."""
    store = _store(load_settings(config))
    _print([model_row(m) for m in store.all()], as_json, LIST_COLUMNS, f"Models in {store.root}")


@models_app.command("show")
def models_show(
    name: str,
    version: Annotated[str | None, typer.Option("--version", help="Default: the newest.")] = None,
    config: ConfigOpt = None,
) -> None:
    """The full spec of one model version (JSON)."""
    stored = _store(load_settings(config)).get(name, version)
    sys.stdout.write(
        json.dumps({**stored.spec.model_dump(mode="json"), "path": str(stored.path)}, indent=2) + "\n"
    )


@models_app.command("build-repo")
def models_build_repo(
    directory: Annotated[Path, typer.Argument(help="The repository folder to write.")],
    flavor: Annotated[
        str, typer.Option("--flavor", help="python: CPU Triton from PyPI; native: NVIDIA's Triton image.")
    ] = "python",
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Only these models (repeatable).")
    ] = None,
    packaged: Annotated[bool, typer.Option(help="Include deepbet from its wheel when not imported.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Write a Triton model repository (config.pbtxt, version folders, dynamic batching)."""
    from radloop.inference.triton_repo import build_repository

    names = build_repository(
        _store(load_settings(config)),
        directory,
        _flavor(flavor),
        model,
        include_packaged=packaged,
        force=force,
    )
    console.print(f"wrote {len(names)} models ({flavor}) to {directory}: {', '.join(names)}")


def _flavor(value: str) -> Literal["python", "native"]:
    if value == "python":
        return "python"
    if value == "native":
        return "native"
    raise ConfigError(f"--flavor must be python or native, not {value!r}")


@triton_app.command("install")
def triton_install(
    venv: Annotated[Path | None, typer.Option(help="Environment folder (default from settings).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Build the server's own virtual environment (nvidia-pytriton, numpy<2, onnxruntime, CPU torch)."""
    from radloop.inference.triton_local import DEFAULT_VENV, ensure_venv

    settings = load_settings(config)
    configure_logging(settings.log_level)
    local = settings.inference.local_triton
    start = time.monotonic()
    path = ensure_venv(venv or local.venv or DEFAULT_VENV, local.pip_args)
    console.print(f"Triton environment at {path} ({time.monotonic() - start:.0f} s)")


@triton_app.command("serve")
def triton_serve(
    repo: Annotated[
        Path | None, typer.Option(help="Serve this repository (default: build one from the store).")
    ] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default from settings, 8000).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default from settings, 8001).")] = None,
    venv: Annotated[Path | None, typer.Option(help="Environment folder (default from settings).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Start the CPU Triton on 127.0.0.1 with the store's models and wait for Ctrl-C.

    Builds the server's environment on first use (a few minutes), writes the repository to
    ``<data_dir>/triton-repo`` (python-backend wrappers), waits until every model is loaded,
    then prints the URLs to put in ``inference.models.<name>.url``.
    """
    from radloop.inference.triton_local import DEFAULT_VENV, LocalTriton, ensure_venv
    from radloop.inference.triton_repo import build_repository

    settings = load_settings(config)
    configure_logging(settings.log_level)
    local = settings.inference.local_triton
    environment = ensure_venv(venv or local.venv or DEFAULT_VENV, local.pip_args)
    if repo is None:
        repo = settings.data_dir / "triton-repo"
        build_repository(_store(settings), repo, "python", force=True)
    server = LocalTriton(
        repo,
        environment,
        settings.data_dir / "triton",
        http_port or local.http_port,
        grpc_port or local.grpc_port,
        local.metrics_port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server.start(local.ready_timeout_s):
        console.print(
            f"Triton ready: {server.http_url} (HTTP), {server.grpc_url} (gRPC); log {server.log_path}"
        )
        try:
            while not stop.wait(1.0):
                if server.proc is not None and server.proc.poll() is not None:
                    raise ConfigError(
                        f"tritonserver exited with {server.proc.returncode}:\n{server.log_tail()}"
                    )
        except KeyboardInterrupt:
            pass
    console.print("Triton stopped")
