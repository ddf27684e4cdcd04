"""``radloop train``: fine-tune a store model on a training export into a new version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from radloop.cli import options
from radloop.cli.models import model_store
from radloop.cli.options import ConfigOpt, JsonOpt
from radloop.cli.output import console, err_console, write_json
from radloop.core.errors import ConfigError
from radloop.core.settings import Settings
from radloop.training.loop import EpochResult, TrainConfig
from radloop.training.service import TrainRequest, parse_base, train_version


def exports_dir(settings: Settings) -> Path:
    """Where named exports live (``training_export.exports_dir``, else ``<data_dir>/exports``)."""
    return settings.training_export.exports_dir or settings.data_dir / "exports"


def train(
    base: Annotated[str, typer.Option("--base", help="The version to start from: NAME@VERSION.")],
    export: Annotated[
        str | None, typer.Option("--export", help="A named export (in the exports folder).")
    ] = None,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Or a MONAI datalist export folder.")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="At most this many epochs.")] = 10,
    learning_rate: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after this many epochs without a better val Dice.")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Same export, seed and base: same weights.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    version: Annotated[
        str | None, typer.Option("--version", help="The new version; default: the next number.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune a model of the store on reviewed cases; the result is a new immutable version.

    Ctrl-C stops training and still stores the best weights so far (after at least one epoch).
    """
    settings = options.settings(config)
    if (export is None) == (dataset is None):
        raise ConfigError("give exactly one of --export NAME or --dataset FOLDER")
    root = dataset if dataset is not None else exports_dir(settings) / str(export)
    name, base_version = parse_base(base)
    train_config = TrainConfig(
        epochs=epochs, learning_rate=learning_rate, patience=patience, seed=seed, device=device
    )
    request = TrainRequest(name, base_version, root, train_config, version)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val Dice {task.fields[dice]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=as_json) as progress:
        task = progress.add_task(f"training {base}", total=epochs, loss="-", dice="-")

        def on_epoch(result: EpochResult) -> None:
            progress.update(task, advance=1, loss=f"{result.loss:.4f}", dice=f"{result.val_dice:.4f}")

        stored, record = train_version(model_store(settings), request, on_epoch)
    if as_json:
        write_json(record)
        return
    console.print(
        f"added {stored.spec.name}@{stored.spec.version} ({record.stopped}, best epoch {record.best_epoch}): "
        f"val Dice {record.base_val_dice} (base) → {record.best_val_dice}; {record.wall_time_s:.1f} s"
    )
