"""gRPC clients of the ``rfkp`` ensemble served by Triton Inference Server (``rfkp serve``).

``KeypointClient`` (blocking) and ``AsyncKeypointClient`` (asyncio) send one image per call and return
``KeypointDetections`` in source-image pixels, with the class names, keypoint names and skeletons the
server's configuration declares. They need the ``serving`` extra (``tritonclient[grpc]``).

Accepted images: encoded bytes (JPEG, PNG, ...; decoded by the server), a path to an image file (its
bytes are sent as they are), a PIL image or uint8 array of any layout in-process ``predict()`` reads
(grey, RGB, RGBA; converted to RGB as ``rfkp.io.load_image`` does and sent as a raw (H, W, 3) frame), or a
uint8 (C, H, W) torch tensor with C 1 or 3 (as ``predict()`` reads it). Float tensors are not sent: their
values would have to be rounded to bytes first (the error says how).

A closed client raises ``RemoteError``. ``AsyncKeypointClient`` opens its channel on first use, in the running
event loop, so it can be made outside one (before ``asyncio.run``); it then serves that loop only.

The channel's reconnect backoff is capped at ``RECONNECT_BACKOFF_MS``: a client survives a server restart and
answers again about a second after the server is ready (gRPC adds up to 20 % jitter to each backoff).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image

from rfkp.detections import KeypointDetections
from rfkp.io import image_file, load_image
from rfkp.serving import protocol as P
from rfkp.serving.packing import ServedMetadata, unpack_detections

__all__ = ["AsyncKeypointClient", "KeypointClient", "RemoteError", "build_inputs", "check_url"]

RemoteImage = bytes | bytearray | memoryview | str | os.PathLike | np.ndarray | Image.Image | torch.Tensor


class RemoteError(RuntimeError):
    """A call failed: the server answered with an error or could not be reached (``status`` is the gRPC status
    name), or the client was closed or used outside its event loop (``status`` None)."""

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


# A restarted server must be reachable again at once: gRPC's reconnect backoff otherwise grows to two minutes.
# Channels with the same arguments share one connection (subchannel) per address, and its backoff: every rfkp
# client caps it, so clients in one process keep sharing one connection, as tritonclient's defaults do.
RECONNECT_BACKOFF_MS = 1000


def _channel_args(grpcclient: Any) -> list[tuple[str, int]]:
    """tritonclient's defaults (message sizes, keep-alive) plus a short reconnect backoff."""
    keepalive = grpcclient.KeepAliveOptions()
    size = grpcclient.MAX_GRPC_MESSAGE_SIZE
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS // 4),
        ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS // 4),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]


def _encoded(image: RemoteImage) -> bytes | None:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return image_file(image).read_bytes()  # the checks of in-process predict() (URLs, pipes, folders, "")
    return None


def _tensor_rgb(tensor: torch.Tensor) -> np.ndarray:
    """A uint8 (C, H, W) tensor with C 1 or 3, as in-process ``predict()`` reads it -> (H, W, 3) uint8 RGB.

    Raises:
        TypeError: a tensor of another dtype (the exact conversion is in the message). ValueError: another shape.
    """
    shape = tuple(tensor.shape)
    if tensor.dtype != torch.uint8:
        raise TypeError(
            f"a {tensor.dtype} tensor {shape} is not sent (its values would be rounded to bytes): convert an image in "
            "[0, 1] with (tensor * 255).round().clamp(0, 255).to(torch.uint8), or send encoded bytes"
        )
    if tensor.ndim != 3 or shape[0] not in (1, 3) or tensor.layout != torch.strided:
        last = tensor.ndim == 3 and shape[2] in (1, 3, 4)
        hint = "; for channels last (H, W, C) send tensor.cpu().numpy()" if last else ""
        raise ValueError(f"got a uint8 tensor {shape}; expected a dense (C, H, W) tensor with C 1 or 3{hint}")
    return load_image(tensor.detach().cpu().permute(1, 2, 0).numpy(), max_pixels=2**62)  # the server's own limit


def build_inputs(image: RemoteImage, threshold: float | None = None, grpcclient: Any = None) -> list[Any]:
    """The request inputs for one image (see ``rfkp.serving.protocol``).

    Raises:
        FileNotFoundError: a path that does not exist. ValueError: a URL, an empty path, a pipe or device, an
            array or tensor in a layout ``predict()`` does not read, or a threshold outside [0, 1]. TypeError: a
            float tensor, or another kind of image.
    """
    grpcclient = grpcclient or _grpc()
    inputs = []
    data = _encoded(image)
    if data is not None:
        tensor = grpcclient.InferInput(P.INPUT_BYTES, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        inputs.append(tensor)
    elif isinstance(image, (np.ndarray, Image.Image, torch.Tensor)):
        # as in-process predict() reads them (grey, RGBA, PIL modes, EXIF, CHW tensors), sent as a raw RGB frame
        if isinstance(image, torch.Tensor):
            rgb = _tensor_rgb(image)
        else:
            rgb = load_image(image, max_pixels=2**62)  # the server applies its own max_pixels
        tensor = grpcclient.InferInput(P.INPUT_RAW, [1, *rgb.shape], "UINT8")
        tensor.set_data_from_numpy(rgb[None])
        inputs.append(tensor)
    else:
        raise TypeError(
            f"unsupported image of type {type(image).__name__}; expected encoded bytes, a path, a PIL image, a "
            "uint8 numpy array or a uint8 (C, H, W) torch tensor"
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
    port_ok = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    if "://" in str(url) or not sep or not host or not port_ok:
        raise ValueError(f"server url must be HOST:PORT with a port in 1..65535 (no scheme), got {url!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not bracketed:
        raise ValueError(f"an IPv6 server address goes in brackets, e.g. [::1]:8001; got {url!r}")
    if bracketed and ":" not in host:
        raise ValueError(f"only an IPv6 address goes in brackets ([::1]:8001), not a host name; got {url!r}")
    if any(c.isspace() for c in str(url)) or "/" in host:
        raise ValueError(f"server url must be HOST:PORT without spaces or a path, got {url!r}")
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


def _closed_error(client: object) -> RemoteError:
    return RemoteError(f"this {type(client).__name__} of {client.url} is closed; make a new one")  # type: ignore[attr-defined]


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
        self._client = self._grpc.InferenceServerClient(url, channel_args=_channel_args(self._grpc))
        self._metadata: ServedMetadata | None = None
        self._closed = False

    def _connection(self) -> Any:
        """The tritonclient client; RemoteError once closed (grpc would raise a bare ValueError)."""
        if self._closed:
            raise _closed_error(self)
        return self._client

    def is_ready(self) -> bool:
        """True when the server and the ensemble are ready."""
        client = self._connection()
        try:
            return bool(client.is_server_ready(client_timeout=self.timeout)
                        and client.is_model_ready(self.model_name, client_timeout=self.timeout))
        except self._grpc.InferenceServerException:
            return False

    @property
    def metadata(self) -> ServedMetadata:
        """Class names, keypoint names and skeletons from the served configuration (fetched once)."""
        if self._metadata is None:
            try:
                config = self._connection().get_model_config(
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
            result = self._connection().infer(
                self.model_name, inputs, outputs=_requested_outputs(self._grpc), client_timeout=self.timeout
            )
        except self._grpc.InferenceServerException as exc:
            raise _remote_error(exc) from None
        return unpack_detections({n: result.as_numpy(n) for n in P.ENSEMBLE_OUTPUTS}, metadata)[0]

    def statistics(self, model_name: str = P.NETWORK) -> dict[str, Any]:
        """Triton's inference statistics of one model (JSON form).

        Raises:
            RemoteError: the server refused (an unknown model, say) or did not answer within the timeout.
        """
        try:
            return self._connection().get_inference_statistics(model_name, as_json=True, client_timeout=self.timeout)
        except self._grpc.InferenceServerException as exc:
            raise _remote_error(exc) from None

    def close(self) -> None:
        """Close the channel (again: nothing); later calls raise RemoteError."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> KeypointClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncKeypointClient:
    """asyncio gRPC client (``tritonclient.grpc.aio``); same arguments and results as ``KeypointClient``.

    It may be made outside an event loop (before ``asyncio.run``): its channel is opened on first use, in the
    running loop, and serves that loop only (a grpc aio channel belongs to the loop it was made in).
    """

    def __init__(self, url: str = "127.0.0.1:8001", *, model_name: str = P.ENSEMBLE, timeout: float | None = None):
        self._grpc = _grpc()
        import tritonclient.grpc.aio as aio

        self._aio = aio
        self.url = check_url(url)
        self.timeout = _check_timeout(timeout)
        self.model_name = model_name
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._metadata: ServedMetadata | None = None
        self._closed = False

    def _connection(self) -> Any:
        """The tritonclient aio client of the running loop, made on first use; RemoteError once closed or from
        another loop."""
        if self._closed:
            raise _closed_error(self)
        loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = self._aio.InferenceServerClient(self.url, channel_args=_channel_args(self._grpc))
            self._loop = loop
        elif loop is not self._loop:
            raise RemoteError(
                f"this AsyncKeypointClient of {self.url} was first used in another event loop; make one per loop "
                "(per asyncio.run)"
            )
        return self._client

    async def is_ready(self) -> bool:
        client = self._connection()
        try:
            return bool(await client.is_server_ready(client_timeout=self.timeout)
                        and await client.is_model_ready(self.model_name, client_timeout=self.timeout))
        except self._grpc.InferenceServerException:
            return False

    async def metadata(self) -> ServedMetadata:
        if self._metadata is None:
            try:
                reply = await self._connection().get_model_config(
                    self.model_name, as_json=True, client_timeout=self.timeout
                )
                config = reply["config"]
            except self._grpc.InferenceServerException as exc:
                raise _remote_error(exc) from None
            self._metadata = _metadata_from_config(config)
        return self._metadata

    async def predict(self, image: RemoteImage, threshold: float | None = None) -> KeypointDetections:
        inputs = build_inputs(image, threshold, self._grpc)
        metadata = await self.metadata()
        try:
            result = await self._connection().infer(
                self.model_name, inputs, outputs=_requested_outputs(self._grpc), client_timeout=self.timeout
            )
        except self._grpc.InferenceServerException as exc:
            raise _remote_error(exc) from None
        return unpack_detections({n: result.as_numpy(n) for n in P.ENSEMBLE_OUTPUTS}, metadata)[0]

    async def statistics(self, model_name: str = P.NETWORK) -> dict[str, Any]:
        try:
            return await self._connection().get_inference_statistics(
                model_name, as_json=True, client_timeout=self.timeout
            )
        except self._grpc.InferenceServerException as exc:
            raise _remote_error(exc) from None

    async def close(self) -> None:
        """Close the channel if one was opened (again: nothing); later calls raise RemoteError."""
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            await self._client.close()

    async def __aenter__(self) -> AsyncKeypointClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
