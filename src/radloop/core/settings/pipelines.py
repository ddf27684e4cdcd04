"""The ``pipelines`` and ``workers`` sections: where pipeline files come from, and who runs jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from radloop.core.settings.common import Secret, StrictModel


class WorkerSettings(StrictModel):
    """The job executor."""

    executor: Literal["local", "celery"] = Field(
        "local",
        description="'local': worker processes of this host claim jobs from the database; "
        "'celery': job ids travel over RabbitMQ to `radloop worker` processes on any host.",
    )
    processes: int = Field(1, ge=1, description="Pipeline worker processes of the local executor.")
    lease_s: float = Field(
        120.0, gt=1, description="A running job whose lease is not renewed for this long is re-queued."
    )
    max_attempts: int = Field(3, ge=1)
    retry_base_s: float = Field(10.0, gt=0)
    retry_cap_s: float = Field(600.0, gt=0)
    poll_interval_s: float = Field(0.5, gt=0)
    torch_threads: int = Field(0, ge=0, description="Threads per worker for torch; 0 = torch's default.")
    # warm workers and dispatch
    warm_models: bool = Field(
        True, description="Worker processes load their pipelines' models at start, not at the first job."
    )
    model_memory_mb: int = Field(
        4096, ge=0, description="Memory budget per worker for loaded models; least recently used are evicted."
    )
    start_timeout_s: float = Field(
        300.0, gt=0, description="How long `radloop serve` waits for its worker processes to start and warm."
    )
    # scale-out (workers.executor: celery); see pipelines/celery_executor.py
    broker_url: Secret = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672//"), description="RabbitMQ URL for the celery executor."
    )
    queues: list[str] = Field(
        default_factory=lambda: ["cpu"], description="Queues a `radloop worker` consumes (--queues)."
    )
    cpu_queue: str = Field("cpu", min_length=1, description="Queue of pipelines that need no GPU.")
    gpu_queue: str = Field("gpu", min_length=1, description="Queue of pipelines with resources.gpus > 0.")
    republish_after_s: float = Field(
        300.0,
        gt=0,
        description="A queued job published this long ago and still not claimed is published again.",
    )
    name: str = Field("", description="Worker name in leases and `jobs show` (default: the host name).")


class PipelineSettings(StrictModel):
    """Where pipeline files come from."""

    dirs: list[Path] = Field(default_factory=list, description="Extra folders of pipeline YAML files.")
    include_reference: bool = Field(True, description="Load the reference pipelines shipped with radloop.")
    destinations: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra destinations per pipeline name ('*' = every pipeline), added to the file's own.",
    )

    def destinations_for(self, pipeline: str, own: list[str]) -> list[str]:
        """The pipeline file's destinations plus those configured here, without repeats."""
        extra = self.destinations.get(pipeline, []) + self.destinations.get("*", [])
        return list(dict.fromkeys([*own, *extra]))
