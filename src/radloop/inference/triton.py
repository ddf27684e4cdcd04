"""Inference on a Triton Inference Server, over HTTP/REST or gRPC (the only tritonclient user).

The URL scheme picks the protocol: ``http://host:8000`` / ``https://…`` (REST, KServe v2
protocol) or ``grpc://host:8001`` / ``grpcs://…``. Input and output names, dtypes and shapes
are read from the server's model metadata, the batch limit from the model configuration.

Every call is bounded: connecting by ``connect_timeout_s``, an inference by ``timeout_s``. A
server that is UNAVAILABLE (down, restarting, refusing connections) is tried again
``retries`` times with exponential backoff from ``retry_backoff_s``; then, and for any other
failure (model missing or not ready, wrong inputs, timeout), :class:`InferenceError` is raised
naming the URL and the model. That error is transient for the job machinery, which retries
the whole job with its own, longer backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from radloop.core.errors import InferenceError
from radloop.core.settings import TritonBackendSettings
from radloop.inference.backend import ModelMetadata, TensorSpec

logger = logging.getLogger(__name__)
T = TypeVar("T")


class TritonBackend:
    """One model on a Triton server. Satisfies :class:`~radloop.inference.backend.InferenceBackend`."""

    def __init__(self, model: str, settings: TritonBackendSettings) -> None:
        """Connect and read the model's metadata (with retries); :class:`InferenceError` if that fails."""
        parts = urlsplit(settings.url)
        self.url = settings.url
        self.model = settings.model_name or model
        self.version = settings.model_version
        self.settings = settings
        self._grpc = parts.scheme in ("grpc", "grpcs")
        self._address = parts.netloc
        self._ssl = parts.scheme in ("https", "grpcs")
        self._local = threading.local()
        self._metadata, self.max_batch_size = self._retrying("read metadata", self._read_metadata)

    @property
    def metadata(self) -> ModelMetadata:
        """Name, version and tensors as the server reports them."""
        return self._metadata

    def infer(self, inputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        """Run the model on ``inputs``; batches above the server's ``max_batch_size`` go in chunks."""
        self._metadata.check_inputs(inputs, self._where())
        batch = next(iter(inputs.values())).shape[0] if self.max_batch_size else 0
        if not self.max_batch_size or batch <= self.max_batch_size:
            return self._retrying("infer", lambda: self._infer_once(inputs))
        chunks = [
            self._retrying(
                "infer",
                lambda s=start: self._infer_once(  # type: ignore[misc]
                    {k: v[s : s + self.max_batch_size] for k, v in inputs.items()}
                ),
            )
            for start in range(0, batch, self.max_batch_size)
        ]
        return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}

    # --- protocol-specific calls ---------------------------------------------------------------

    def _client(self) -> Any:
        """A client for this thread (the HTTP client is not safe to share between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self._grpc:
                import tritonclient.grpc as grpcclient

                client = grpcclient.InferenceServerClient(self._address, ssl=self._ssl)
            else:
                import tritonclient.http as httpclient

                client = httpclient.InferenceServerClient(
                    self._address,
                    ssl=self._ssl,
                    connection_timeout=self.settings.connect_timeout_s,
                    network_timeout=self.settings.timeout_s,
                )
            self._local.client = client
        return client

    def _read_metadata(self) -> tuple[ModelMetadata, int]:
        client = self._client()
        if self._grpc:
            timeout = min(self.settings.timeout_s, self.settings.connect_timeout_s + 5.0)
            meta = client.get_model_metadata(self.model, self.version, as_json=True, client_timeout=timeout)
            config = client.get_model_config(self.model, self.version, as_json=True, client_timeout=timeout)
            config = config.get("config", config)
        else:
            meta = client.get_model_metadata(self.model, self.version)
            config = client.get_model_config(self.model, self.version)
        metadata = ModelMetadata(
            name=str(meta["name"]),
            version=str((meta.get("versions") or [self.version or "1"])[-1]),
            inputs=tuple(_tensor_spec(t) for t in meta.get("inputs", [])),
            outputs=tuple(_tensor_spec(t) for t in meta.get("outputs", [])),
        )
        return metadata, int(config.get("max_batch_size", 0) or 0)

    def _infer_once(self, inputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        if self._grpc:
            import tritonclient.grpc as protocol
        else:
            import tritonclient.http as protocol
        from tritonclient.utils import np_to_triton_dtype

        requests = []
        for spec in self._metadata.inputs:
            array = np.ascontiguousarray(inputs[spec.name])
            request = protocol.InferInput(spec.name, list(array.shape), np_to_triton_dtype(array.dtype))
            request.set_data_from_numpy(array)
            requests.append(request)
        outputs = [protocol.InferRequestedOutput(s.name) for s in self._metadata.outputs]
        kwargs = {"client_timeout": self.settings.timeout_s} if self._grpc else {}
        result = self._client().infer(
            self.model, requests, model_version=self.version, outputs=outputs, **kwargs
        )
        return {s.name: np.asarray(result.as_numpy(s.name)) for s in self._metadata.outputs}

    # --- errors and retries --------------------------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, tried again while the server is unavailable; :class:`InferenceError` at last."""
        delay = self.settings.retry_backoff_s
        for attempt in range(self.settings.retries + 1):
            try:
                return call()
            except Exception as e:
                unavailable = _is_unavailable(e)
                if not unavailable or attempt == self.settings.retries:
                    tries = f" after {attempt + 1} tries" if unavailable else ""
                    raise InferenceError(f"{self._where()}: {what} failed{tries}: {_describe(e)}") from e
                logger.warning(
                    "%s: %s: server unavailable (%s); retry %d/%d in %.1f s",
                    self._where(),
                    what,
                    _describe(e),
                    attempt + 1,
                    self.settings.retries,
                    delay,
                )
                self._local.client = None  # reconnect
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _where(self) -> str:
        version = f" version {self.version}" if self.version else ""
        return f"Triton {self.url} model {self.model!r}{version}"


def _tensor_spec(tensor: dict[str, Any]) -> TensorSpec:
    from tritonclient.utils import triton_to_np_dtype

    dtype = triton_to_np_dtype(str(tensor["datatype"]))
    shape = tuple(int(d) for d in tensor.get("shape", [])) or (-1,)
    return TensorSpec(str(tensor["name"]), np.dtype(dtype).name, shape)


def _is_unavailable(error: Exception) -> bool:
    """Server down or not accepting connections (worth another try), as opposed to any other error."""
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        status = str(error.status() or "")
        return "UNAVAILABLE" in status or "Connection refused" in str(error.message() or "")
    return isinstance(error, ConnectionError) and not isinstance(error, TimeoutError)


def _describe(error: Exception) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        status = error.status()
        return f"{status + ': ' if status else ''}{error.message()}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
