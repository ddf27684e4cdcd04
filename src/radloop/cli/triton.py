"""``radloop triton …``: a local CPU Triton Inference Server (development, CI)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from radloop.cli import options
from radloop.cli.models import model_store
from radloop.cli.options import ConfigOpt
from radloop.cli.output import console
from radloop.core.errors import ConfigError
from radloop.core.logging import configure_logging

app = typer.Typer(help="A local CPU Triton Inference Server (development, CI).", no_args_is_help=True)


@app.command("install")
def triton_install(
    venv: Annotated[Path | None, typer.Option(help="Environment folder (default from settings).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Build the server's own virtual environment (nvidia-pytriton, numpy<2, onnxruntime, CPU torch)."""
    from radloop.inference.triton_local import DEFAULT_VENV, ensure_venv

    settings = options.settings(config)
    configure_logging(settings.log_level)
    local = settings.inference.local_triton
    start = time.monotonic()
    path = ensure_venv(venv or local.venv or DEFAULT_VENV, local.pip_args)
    console.print(f"Triton environment at {path} ({time.monotonic() - start:.0f} s)")


@app.command("serve")
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

    settings = options.settings(config)
    configure_logging(settings.log_level)
    local = settings.inference.local_triton
    environment = ensure_venv(venv or local.venv or DEFAULT_VENV, local.pip_args)
    if repo is None:
        repo = settings.data_dir / "triton-repo"
        build_repository(model_store(settings), repo, "python", force=True)
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
