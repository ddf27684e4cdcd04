"""``radloop models …``: the versioned model store and Triton model repositories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import console, emit, write_json
from radloop.core.errors import ConfigError
from radloop.core.settings import Settings
from radloop.inference.store import ModelStore, StoredModel

app = typer.Typer(help="The versioned model store and Triton model repositories.", no_args_is_help=True)


def model_store(settings: Settings) -> ModelStore:
    """The model store under ``settings`` (``inference.store_dir``)."""
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


@app.command("add")
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
    stored = model_store(options.settings(config)).add(
        path, name, version, _read_overrides(spec), replace=replace
    )
    emit([model_row(stored)], as_json, [*LIST_COLUMNS, "path"], "Added")


@app.command("import-deepbet")
def models_import_deepbet(
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite existing versions.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy deepbet's two brain-extraction networks (from its wheel) into the store."""
    from radloop.inference.packaged import packaged_models

    store = model_store(options.settings(config))
    packaged = packaged_models()
    if not packaged:
        raise ConfigError("deepbet is not installed: `pip install deepbet==1.0.2`")
    rows = [model_row(store.add_packaged(p, replace=replace)) for p in packaged.values()]
    emit(rows, as_json, LIST_COLUMNS, "Imported")


@app.command("list")
def models_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every version of every model in the store."""
    store = model_store(options.settings(config))
    emit([model_row(m) for m in store.all()], as_json, LIST_COLUMNS, f"Models in {store.root}")


@app.command("show")
def models_show(
    name: str,
    version: Annotated[str | None, typer.Option("--version", help="Default: the newest.")] = None,
    config: ConfigOpt = None,
) -> None:
    """The full spec of one model version (JSON)."""
    stored = model_store(options.settings(config)).get(name, version)
    write_json({**stored.spec.model_dump(mode="json"), "path": str(stored.path)})


@app.command("build-repo")
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
        model_store(options.settings(config)),
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
