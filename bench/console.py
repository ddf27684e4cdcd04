"""The operator console with many studies: server time of the study list's first page and searches.

    PYTHONPATH=src .venv/bin/python bench/console.py [--studies 10000] [--rounds 20] [--data DIR]

Stores ``--studies`` one-instance studies through radloop's own instance store (the SCP's
code path: durable file, then the index rows; `tests/console_data.py`), then asks the real app
(``create_app``, in process, signed in as an operator) for console pages and prints, per page,
the server time from the ``Server-Timing`` header (the route's own work: queries and HTML) and
the wall time of the whole request, median and worst of ``--rounds`` after one warm-up. The
issue's target is ≤ 300 ms server time for the first page and a search. For scale, the same run
times radloop's REST study list (`/api/v1/studies?limit=50`, the CLI's query) on the same data.
``--data DIR`` keeps the store between runs (the studies are stored once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fastapi.testclient import TestClient  # noqa: E402
from sqlmodel import func, select  # noqa: E402

import console_data  # noqa: E402 - lives in tests/, put on sys.path just above
from radloop import services  # noqa: E402
from radloop.api.app import create_app  # noqa: E402
from radloop.core.db import session_scope  # noqa: E402
from radloop.core.models import Study  # noqa: E402
from radloop.core.settings import load_settings  # noqa: E402
from radloop.runtime import Runtime  # noqa: E402

TARGET_MS = 300.0
PAGES = {
    "study list, first page": "/console/studies",
    "search: patient name part": "/console/studies?patient=patient0777",
    "search: accession prefix": "/console/studies?accession=ACC00123",
    "search: modality + AE (series join)": "/console/studies?modality=CT&ae=RADLOOP_BRAIN",
    "search: date range": "/console/studies?date_from=20260301&date_to=20260310",
    "study list, page 100 (offset 4950)": "/console/studies?offset=4950",
    "overview (last day)": "/console/?window=day",
    "jobs": "/console/jobs",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--data", type=Path, default=None, help="keep the store here between runs")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="radloop-console-bench-"))
    settings = load_settings(None, data_dir=str(data))
    runtime = Runtime.build(settings, migrate=True)
    with session_scope(runtime.engine) as s:
        have = int(s.exec(select(func.count()).select_from(Study)).one())
    if have < args.studies:
        started = time.perf_counter()
        console_data.store_studies(runtime.store, args.studies - have, start=have, threads=8)
        took = time.perf_counter() - started
        print(f"stored {args.studies - have} studies through InstanceStore.store in {took:.1f} s")
    print(f"{max(have, args.studies)} studies in the index ({settings.database_url.split(':')[0]}), {data}")

    app = create_app(runtime)
    token = services.create_token(runtime.engine, f"bench-{time.time_ns()}", ["operator"]).token
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as client:
        answer = client.post("/console/login", data={"token": token})
        assert answer.status_code == 303, answer.text
        api = {"Authorization": f"Bearer {token}"}
        rows = [_measure(client, name, url, {}, args.rounds) for name, url in PAGES.items()]
        rest = _measure(client, "REST /api/v1/studies?limit=50", "/api/v1/studies?limit=50", api, args.rounds)
    print(f"\n{'page':40} {'server ms (median / worst)':>28} {'wall ms (median)':>17}  rows")
    for name, server, worst, wall, n in [*rows, rest]:
        print(f"{name:40} {server:>14.1f} / {worst:<11.1f} {wall:>17.1f}  {n}")
    first, search = rows[0], rows[1:5]
    worst_search = max(r[1] for r in search)
    print(
        f"\nfirst page {first[1]:.1f} ms, slowest search {worst_search:.1f} ms (median server time); "
        f"target ≤ {TARGET_MS:.0f} ms: {'met' if max(first[1], worst_search) <= TARGET_MS else 'NOT met'}"
    )
    print(f"first page ÷ REST study list (same data, same run): {first[3] / rest[3]:.2f} (wall)")


def _measure(
    client: TestClient, name: str, url: str, headers: dict[str, str], rounds: int
) -> tuple[str, float, float, float, int]:
    """Median and worst server time (Server-Timing, or wall when absent), median wall, rows shown."""
    client.get(url, headers=headers)  # warm-up
    server, wall = [], []
    answer = None
    for _ in range(rounds):
        started = time.perf_counter()
        answer = client.get(url, headers=headers)
        wall.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
        timing = answer.headers.get("server-timing", "")
        server.append(float(timing.split("dur=")[1]) if "dur=" in timing else wall[-1])
    assert answer is not None
    shown = answer.text.count("<tr><td><a ") if url.startswith("/console") else len(answer.json())
    return name, statistics.median(server), max(server), statistics.median(wall), shown


if __name__ == "__main__":
    main()
