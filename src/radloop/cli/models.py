"""``radloop models …``: the versioned model store, stages (shadow, production), comparisons,
and Triton model repositories."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml

from radloop.cli import options
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import console, emit, table, write_json
from radloop.core import atna, audit
from radloop.core.db import session_scope
from radloop.core.errors import ConfigError
from radloop.core.settings import Settings
from radloop.inference.stages import Stage
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
    path: Annotated[
        Path,
        typer.Argument(
            help="An .onnx file, a TorchScript file, a MONAI bundle folder or an nnU-Net v2 results folder."
        ),
    ],
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


@app.command("import-taps")
def models_import_taps(
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing version.")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy the TAPS prostate network (from the lavlab-taps wheel) into the store, licence recorded."""
    from radloop.inference.model_import import import_taps

    stored = import_taps(model_store(options.settings(config)), replace=replace)
    emit([model_row(stored)], as_json, LIST_COLUMNS, "Imported")


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
    """The full spec of one model version, its stage and its training provenance (JSON)."""
    from radloop.inference.model_import import read_package_provenance
    from radloop.training.provenance import read_provenance

    store = model_store(options.settings(config))
    stored = store.get(name, version)
    stage = store.stages(name).stage_of(stored.spec.version)
    record = read_provenance(stored)
    write_json(
        {
            **stored.spec.model_dump(mode="json"),
            "path": str(stored.path),
            "stage": None if stage is None else stage.value,
            "training": None if record is None else record.model_dump(mode="json"),
            "provenance": read_package_provenance(stored),
        }
    )


ActorOpt = Annotated[
    str | None, typer.Option("--by", help="Who makes the change (audit log); default: the OS user.")
]


@app.command("stage")
def models_stage(
    name: str,
    version: str,
    stage: Annotated[Stage, typer.Argument(help="shadow, production or retired.")],
    force: Annotated[
        bool, typer.Option("--force", help="production: promote without a saved comparison.")
    ] = False,
    by: ActorOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Stage a version: shadow (runs beside production, never delivered), production, retired."""
    _set_stage(config, name, version, stage, force, by)


@app.command("promote")
def models_promote(
    name: str,
    version: str,
    force: Annotated[
        bool, typer.Option("--force", help="Promote without a saved `models compare` result.")
    ] = False,
    by: ActorOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make a version production (pipelines use it from their next job); needs an evaluation."""
    _set_stage(config, name, version, Stage.production, force, by)


@app.command("rollback")
def models_rollback(name: str, by: ActorOpt = None, config: ConfigOpt = None) -> None:
    """Make the previous production version production again."""
    runtime = options.runtime(config, migrate=True)
    store = model_store(runtime.settings)
    actor = _actor(by)
    current = store.stages(name).production
    previous, _ = store.rollback(name, actor)
    with session_scope(runtime.engine) as s:
        audit.record(s, actor, "model.rollback", f"model:{name}", {"from": current, "to": previous})
        change = f"production rolled back from {current} to {previous}"
        alert = atna.security_alert(atna.person(actor), atna.SOFTWARE_CONFIGURATION, f"model:{name}", change)
        atna.record(s, runtime.settings.audit, alert)
    console.print(f"{name}: production is {previous} again (was {current})")


@app.command("compare")
def models_compare(
    name: str,
    versions: Annotated[str, typer.Option("--versions", help="Two versions, e.g. 1,2.")],
    export: Annotated[
        str | None, typer.Option("--export", help="A named export holding the reviewed cases.")
    ] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Or an export folder.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Both versions on the reviewed cases neither was trained on: Dice, volume error, 95 % CIs."""
    from radloop.cli.train import exports_dir
    from radloop.training.evaluate import compare_versions

    settings = options.settings(config)
    pair = tuple(v.strip() for v in versions.split(","))
    if len(pair) != 2 or not all(pair):
        raise ConfigError(f"--versions must name two versions, e.g. 1,2; got {versions!r}")
    if (export is None) == (dataset is None):
        raise ConfigError("give exactly one of --export NAME or --dataset FOLDER")
    root = dataset if dataset is not None else exports_dir(settings) / str(export)
    result = compare_versions(model_store(settings), name, (pair[0], pair[1]), root, device)
    if as_json:
        write_json(result)
        return
    rows = [
        {
            "version": v.version,
            "mean Dice": f"{v.mean_dice:.4f}",
            "Dice 95% CI": f"{v.dice_ci95[0]:.4f}–{v.dice_ci95[1]:.4f}",
            "volume error %": f"{v.mean_volume_error_pct:+.1f}",
            "volume 95% CI": f"{v.volume_error_ci95[0]:+.1f}–{v.volume_error_ci95[1]:+.1f}",
        }
        for v in result.scores
    ]
    table(rows, list(rows[0]), f"{name}: {len(result.cases)} held-out reviewed cases of {result.export}")
    low, high = result.dice_difference_ci95
    console.print(
        f"paired Dice difference {pair[1]} − {pair[0]}: {result.dice_difference:+.4f} "
        f"(95% CI {low:+.4f}…{high:+.4f}); wins {result.wins}"
    )


def _set_stage(
    config: Path | None, name: str, version: str, stage: Stage, force: bool, by: str | None
) -> None:
    from radloop.training.evaluate import has_evaluation

    runtime = options.runtime(config, migrate=True)
    store = model_store(runtime.settings)
    store.get(name, version)
    if stage == Stage.production and not force and not has_evaluation(store, name, version):
        raise ConfigError(
            f"{name}@{version} has no evaluation: run `radloop models compare {name} --versions "
            f"CURRENT,{version} --export NAME` first, or promote with --force"
        )
    actor = _actor(by)
    before = store.stages(name).stage_of(version)
    store.set_stage(name, version, stage, actor)
    with session_scope(runtime.engine) as s:
        audit.record(
            s,
            actor,
            f"model.stage.{stage.value}",
            f"model:{name}@{version}",
            {"before": None if before is None else before.value, "forced": force},
        )
        change = f"stage {None if before is None else before.value} -> {stage.value}" + (
            " (forced)" if force else ""
        )
        subject = f"model:{name}@{version}"
        atna.record(
            s,
            runtime.settings.audit,
            atna.security_alert(atna.person(actor), atna.SOFTWARE_CONFIGURATION, subject, change),
        )
    console.print(f"{name}@{version} is now {stage.value}")


def _actor(by: str | None) -> str:
    return by or getpass.getuser()


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
