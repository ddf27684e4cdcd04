"""One console, and one way to print what a command returns: a table, or JSON with ``--json``.

Services return pydantic read models or plain dicts; :func:`plain` turns either (and lists of
them) into JSON-ready data, so the output is the same whichever a service returns.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)  # progress bars and notes, so stdout stays parseable


def plain(data: Any) -> Any:
    """``data`` with every pydantic model dumped (``mode="json"``); dicts, lists and scalars kept."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [plain(item) for item in data]
    if isinstance(data, dict):
        return {key: plain(value) for key, value in data.items()}
    return data


def write_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (values JSON does not know printed with ``str``)."""
    sys.stdout.write(json.dumps(plain(data), indent=2, default=str) + "\n")


def table(rows: Sequence[Any], columns: Sequence[str], title: str) -> None:
    """A table of ``rows`` (models or dicts) with ``columns``; a missing or ``None`` value prints empty."""
    out = Table(title=title)
    for column in columns:
        out.add_column(column)
    for row in plain(list(rows)):
        out.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(out)


def emit(data: Any, as_json: bool, columns: Sequence[str], title: str) -> None:
    """``data`` (a model, a dict, or a list of either) as JSON, or as a table of ``columns``."""
    if as_json:
        write_json(data)
    else:
        table(data if isinstance(data, list) else [data], columns, title)
