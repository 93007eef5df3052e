"""gRPC clients of the ``rfkp`` ensemble served by Triton Inference Server (``rfkp serve``).

``KeypointClient`` (blocking) and ``AsyncKeypointClient`` (asyncio) send one image per call and return
``KeypointDetections`` in source-image pixels, with the class names, keypoint names and skeletons the
server's configuration declares. They need the ``serving`` extra (``tritonclient[grpc]``).

Accepted images: encoded bytes (JPEG, PNG, ...; decoded by the server), a path to an image file (its
bytes are sent as they are), or an (H, W, 3) uint8 RGB array (sent raw).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rfkp.detections import KeypointDetections
from rfkp.serving import protocol as P
from rfkp.serving.packing import ServedMetadata, unpack_detections

__all__ = ["AsyncKeypointClient", "KeypointClient", "RemoteError", "build_inputs", "check_url"]

RemoteImage = bytes | bytearray | memoryview | str | os.PathLike | np.ndarray


class RemoteError(RuntimeError):
    """The server answered a request with an error (``status`` is the gRPC status name)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message if status is None else f"[{status}] {message}")
        self.status = status
        self.server_message = message


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("rfkp.client needs tritonclient[grpc]: pip install 'rfkp[serving]'") from exc
    return grpcclient


def _encoded(image: RemoteImage) -> bytes | None:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise IsADirectoryError(f"expected an image file, got a folder: {path}")
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        return path.read_bytes()
    return None


def build_inputs(image: RemoteImage, threshold: float | None = None, grpcclient: Any = None) -> list[Any]:
    """The request inputs for one image (see ``rfkp.serving.protocol``).

    Raises:
        FileNotFoundError: a path that is not a file. ValueError: an array that is not (H, W, 3)
            uint8, or a threshold outside [0, 1]. TypeError: another kind of image.
    """
    grpcclient = grpcclient or _grpc()
    inputs = []
    data = _encoded(image)
    if data is not None:
        tensor = grpcclient.InferInput(P.INPUT_BYTES, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        inputs.append(tensor)
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"raw images must be (H, W, 3) uint8 RGB arrays, got dtype {image.dtype} shape {image.shape}"
            )
        tensor = grpcclient.InferInput(P.INPUT_RAW, [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(image)[None])
        inputs.append(tensor)
    else:
        raise TypeError(
            f"unsupported image of type {type(image).__name__}; expected encoded bytes, a path or an "
            "(H, W, 3) uint8 array"
        )
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        tensor = grpcclient.InferInput(P.INPUT_THRESHOLD, [1, 1], "FP32")
        tensor.set_data_from_numpy(np.full((1, 1), threshold, np.float32))
        inputs.append(tensor)
    return inputs


def check_url(url: str) -> str:
    """``host:port`` with a port in 1..65535 (gRPC endpoints have no scheme here); an IPv6 address in
    brackets, ``[::1]:8001``.

    Raises:
        ValueError: another form, naming what was given.
    """
    host, sep, port = str(url).rpartition(":")
    if "://" in str(url) or not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"server url must be HOST:PORT with a port in 1..65535 (no scheme), got {url!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"an IPv6 server address goes in brackets, e.g. [::1]:8001; got {url!r}")
    return str(url)


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise ValueError(f"timeout must be a finite number of seconds > 0 (or None), got {timeout!r}")
    return None if timeout is None else float(timeout)


def _requested_outputs(grpcclient: Any) -> list[Any]:
    return [grpcclient.InferRequestedOutput(name) for name in P.ENSEMBLE_OUTPUTS]


def _metadata_from_config(config: Mapping[str, Any]) -> ServedMetadata:
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    try:
        return ServedMetadata.from_parameters(params)
    except ValueError as exc:
        raise ValueError(f"model {config.get('name', '?')!r} is not an rfkp ensemble (rfkp serve's 'rfkp'): {exc}") from None


def _remote_error(exc: Exception) -> RemoteError:
    status = exc.status() if hasattr(exc, "status") else None
    message = exc.message() if hasattr(exc, "message") else str(exc)
    return RemoteError(str(message), None if status is None else str(status))


class KeypointClient:
    """Blocking gRPC client.

    Args:
        url: ``host:port`` of the server's gRPC endpoint (default: ``rfkp serve``'s).
        model_name: the ensemble to call.
        timeout: per-request client timeout in seconds (None: no limit).
    """

    def __init__(self, url: str = "127.0.0.1:8001", *, model_name: str = P.ENSEMBLE, timeout: float | None = None):
        self._grpc = _grpc()
        self.url = check_url(url)
        self.timeout = _check_timeout(timeout)
        self.model_name = model_name
        self._client = self._grpc.InferenceServerClient(url)
        self._metadata: ServedMetadata | None = None

    def is_ready(self) -> bool:
        """True when the server and the ensemble are ready."""
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model_name))
        except self._grpc.InferenceServerException:
            return False

    @property
    def metadata(self) -> ServedMetadata:
        """Class names, keypoint names and skeletons from the served configuration (fetched once)."""
        if self._metadata is None:
            try:
                config = self._client.get_model_config(
                    self.model_name, as_json=True, client_timeout=self.timeout
                )["config"]
            except self._grpc.InferenceServerException as exc:
                raise _remote_error(exc) from None
            self._metadata = _metadata_from_config(config)
        return self._metadata

    def predict(self, image: RemoteImage, threshold: float | None = None) -> KeypointDetections:
        """Detections for one image; ``threshold`` None uses the server's default.

        Raises:
            RemoteError: the server rejected the request (message says which input and why).
        """
        inputs = build_inputs(image, threshold, self._grpc)
        metadata = self.metadata
        try:
            result = self._client.infer(
                self.model_name, inputs, outputs=_requested_outputs(self._grpc), client_timeout=self.timeout
            )
        except self._grpc.InferenceServerException as exc:
            raise _remote_error(exc) from None
        return unpack_detections({n: result.as_numpy(n) for n in P.ENSEMBLE_OUTPUTS}, metadata)[0]

    def statistics(self, model_name: str = P.NETWORK) -> dict[str, Any]:
        """Triton's inference statistics of one model (JSON form)."""
        return self._client.get_inference_statistics(model_name, as_json=True)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KeypointClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncKeypointClient:
    """asyncio gRPC client (``tritonclient.grpc.aio``); same arguments and results as ``KeypointClient``."""

    def __init__(self, url: str = "127.0.0.1:8001", *, model_name: str = P.ENSEMBLE, timeout: float | None = None):
        self._grpc = _grpc()
        import tritonclient.grpc.aio as aio

        self.url = check_url(url)
        self.timeout = _check_timeout(timeout)
        self.model_name = model_name
        self._client = aio.InferenceServerClient(url)
        self._metadata: ServedMetadata | None = None

    async def is_ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready() and await self._client.is_model_ready(self.model_name))
        except self._grpc.InferenceServerException:
            return False

    async def metadata(self) -> ServedMetadata:
        if self._metadata is None:
            try:
                reply = await self._client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout)
                config = reply["config"]
            except self._grpc.InferenceServerException as exc:
                raise _remote_error(exc) from None
            self._metadata = _metadata_from_config(config)
        return self._metadata

    async def predict(self, image: RemoteImage, threshold: float | None = None) -> KeypointDetections:
        inputs = build_inputs(image, threshold, self._grpc)
        metadata = await self.metadata()
        try:
            result = await self._client.infer(
                self.model_name, inputs, outputs=_requested_outputs(self._grpc), client_timeout=self.timeout
            )
        except self._grpc.InferenceServerException as exc:
            raise _remote_error(exc) from None
        return unpack_detections({n: result.as_numpy(n) for n in P.ENSEMBLE_OUTPUTS}, metadata)[0]

    async def statistics(self, model_name: str = P.NETWORK) -> dict[str, Any]:
        return await self._client.get_inference_statistics(model_name, as_json=True)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> AsyncKeypointClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
