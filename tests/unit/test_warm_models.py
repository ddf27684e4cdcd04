"""Warm models: which models a worker loads at start, and the least-recently-used cache."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from radloop.core.settings import InferenceSettings, load_settings
from radloop.inference.packaged import DEEPBET_BBOX, DEEPBET_MASK
from radloop.inference.resolve import ModelResolver
from radloop.inference.store import ModelStore
from radloop.pipelines.catalog import PipelineCatalog
from radloop.pipelines.operators import builtin_registry
from radloop.pipelines.warm import ModelCache, models_to_warm


def test_models_to_warm_lists_the_listeners_pipelines_first(tmp_path: Path) -> None:
    settings = load_settings(data_dir=str(tmp_path))
    catalog = PipelineCatalog.load(settings, builtin_registry())
    names = models_to_warm(settings, catalog)
    assert names[:2] == [DEEPBET_BBOX, DEEPBET_MASK]  # RADLOOP_BRAIN's brain-extraction, listed by default
    assert len(names) == len(set(names))


def test_cache_keeps_models_within_its_budget_evicting_the_least_recently_used(tmp_path: Path) -> None:
    resolver = ModelResolver(InferenceSettings(), ModelStore(tmp_path / "models"))
    probe = ModelCache(resolver, 0)
    one_model = max(probe.estimate_bytes(DEEPBET_BBOX), probe.estimate_bytes(DEEPBET_MASK))
    assert one_model > 0
    cache = ModelCache(resolver, one_model + 1)

    assert cache.warm(DEEPBET_BBOX)
    assert not cache.warm(DEEPBET_MASK)  # warming never evicts
    assert cache.names() == [DEEPBET_BBOX]

    gc.freeze()  # as a worker process does after warming up
    try:
        mask = cache.get(DEEPBET_MASK)  # a job needs it: the least recently used model makes room
        assert gc.get_freeze_count() == 0  # unfrozen, so that what the evicted model held is freed
    finally:
        gc.unfreeze()
    assert mask.name == DEEPBET_MASK
    assert cache.names() == [DEEPBET_MASK]
    assert cache.used_bytes <= cache.budget_bytes
    assert cache.get(DEEPBET_MASK) is mask  # held: not loaded again


def test_cache_serves_only_resolvers_with_the_same_settings_and_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    cache = ModelCache(ModelResolver(InferenceSettings(), store), 1 << 30)
    assert cache.serves(ModelResolver(InferenceSettings(), ModelStore(tmp_path / "models")))
    assert not cache.serves(ModelResolver(InferenceSettings(), ModelStore(tmp_path / "other")))


def _fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (process-wide state: threads, the collector)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_torch_threads_caps_torch_even_when_torch_was_imported_first() -> None:
    """``workers.torch_threads`` must reach torch in a Celery prefork child, where torch was imported
    by the parent before the fork: the environment variable alone is read too late there."""
    printed = _fresh_python(
        "import torch; torch.set_num_threads(2); "
        "from radloop.pipelines.executor import limit_threads; limit_threads(1); "
        "print(torch.get_num_threads())"
    )
    assert printed.strip() == "1"


def test_a_worker_freezes_what_it_holds_from_its_start() -> None:
    """The start-up objects leave the collector's scans (a fresh interpreter: nothing frozen before)."""
    printed = _fresh_python(
        "import gc; from radloop.pipelines.executor import freeze_start_up_objects; "
        "before = gc.get_freeze_count(); frozen = freeze_start_up_objects(); "
        "print(before, frozen, gc.get_freeze_count())"
    )
    before, frozen, now = (int(n) for n in printed.split())
    assert before == 0
    assert frozen == now > 10_000  # radloop's imports alone
