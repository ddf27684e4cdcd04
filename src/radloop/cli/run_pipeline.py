"""``radloop run-pipeline``: a pipeline on a folder of DICOM files, without a server (XNAT's entrypoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from radloop.cli import options
from radloop.cli.options import ConfigOpt
from radloop.cli.output import write_json
from radloop.core.logging import configure_logging


def run_pipeline(
    name: Annotated[str, typer.Argument(help="Pipeline name.")],
    input_dir: Annotated[Path, typer.Option("--input", help="DICOM folder (an XNAT session or scan mount).")],
    output_dir: Annotated[Path, typer.Option("--output", help="Results: OUTPUT/<KIND>/<SOP UID>.dcm.")],
    scans: Annotated[str, typer.Option(help="Scan IDs to run on, comma-separated; empty = all.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Run a pipeline on a folder of DICOM files, without a server (the XNAT container's entrypoint)."""
    from radloop.inference.resolve import ModelResolver
    from radloop.xnat_plugin.run_pipeline import run_on_folder

    runtime = options.runtime(config, migrate=False)  # no database: the catalog and models only
    settings = runtime.settings
    configure_logging(settings.log_level)
    pipeline = runtime.catalog.get(name)
    run = run_on_folder(
        pipeline, input_dir, output_dir, scans.split(","), models=ModelResolver.from_settings(settings)
    )
    summary: dict[str, Any] = {
        "pipeline": name,
        "ran_on": [m.describe() for m in run.ran],
        "skipped": run.skipped,
        "outputs": [str(p) for p in run.outputs],
    }
    write_json(summary)
