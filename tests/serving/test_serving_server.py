"""A real Triton server over real gRPC: parity with in-process predict(), metadata, errors, batching."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc", reason="serving tests need the 'serving' extra (tritonclient[grpc])")

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from serving_helpers import PIXEL_TOL, SHARED, assert_same, encode, noise_image, png_header_only

from rfkp.api import RFDETRKeypoint
from rfkp.client import AsyncKeypointClient, KeypointClient, RemoteError
from rfkp.detections import KeypointDetections
from rfkp.serving import protocol as P
from rfkp.serving.launcher import TritonServer


@pytest.fixture(scope="module")
def client(server: TritonServer):
    with KeypointClient(server.grpc_url, timeout=60) as c:
        yield c


def test_ready_and_metadata(client: KeypointClient, tiny_model: RFDETRKeypoint) -> None:
    assert client.is_ready()
    meta = client.metadata
    cfg = tiny_model.config
    assert meta.class_names == list(cfg.class_names)
    assert meta.keypoint_names[0] == list(cfg.keypoint_names[0])
    assert meta.skeletons[0] == [tuple(e) for e in cfg.skeletons[0]]
    assert meta.random_init is False


@pytest.mark.parametrize("layout", ["pil_rgba", "grey", "rgba"])
def test_images_in_every_layout_predict_reads_match_it(layout: str, client: KeypointClient,
                                                       tiny_model: RFDETRKeypoint) -> None:  # fmt: skip
    from PIL import Image

    rgb = noise_image(120, 90, seed=8)
    image = {"pil_rgba": Image.fromarray(rgb).convert("RGBA"), "grey": rgb[:, :, 0],
             "rgba": np.concatenate([rgb, np.full((120, 90, 1), 7, np.uint8)], axis=2)}[layout]  # fmt: skip
    assert_same(client.predict(image, threshold=0.0), tiny_model.predict(image, threshold=0.0))


def test_statistics_errors_and_timeouts(client: KeypointClient) -> None:
    assert "model_stats" in client.statistics()
    with pytest.raises(RemoteError, match="nope"):
        client.statistics("nope")
    assert client.is_ready()  # with the client's timeout


def test_a_server_that_never_answers_times_out_within_the_client_timeout() -> None:
    import time
    from concurrent import futures

    import grpc

    class Silent(grpc.GenericRpcHandler):  # speaks gRPC, answers every call after 3 s
        def service(self, details):  # noqa: ANN001, ANN202
            return grpc.unary_unary_rpc_method_handler(lambda request, context: time.sleep(3) or b"")

    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((Silent(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with KeypointClient(f"127.0.0.1:{port}", timeout=0.5) as slow:
            start = time.monotonic()
            assert slow.is_ready() is False
            with pytest.raises(RemoteError, match="DEADLINE_EXCEEDED"):
                slow.statistics()
            assert time.monotonic() - start < 2.5  # two calls of 0.5 s each, not the server's 3 s
    finally:
        server.stop(0)


@pytest.mark.parametrize("kind", ["png", "jpeg", "raw", "path"])
def test_matches_in_process_predict(
    kind: str, client: KeypointClient, tiny_model: RFDETRKeypoint, tmp_path: Path
) -> None:
    image = noise_image(203, 317, seed=5)  # odd sizes: resize and scaling back are exercised
    payload: object
    if kind == "png":
        payload = encode(image, "PNG")
    elif kind == "jpeg":
        payload = encode(image, "JPEG")
    elif kind == "raw":
        payload = image
    else:
        payload = tmp_path / "frame.png"
        payload.write_bytes(encode(image, "PNG"))
    remote = client.predict(payload, threshold=0.0)
    local = tiny_model.predict(payload, threshold=0.0)
    assert_same(remote, local)


def test_real_image_matches(client: KeypointClient, tiny_model: RFDETRKeypoint) -> None:
    path = SHARED / "data" / "coco-sample" / "images" / "000000000785.jpg"
    if not path.is_file():
        pytest.skip(f"shared test data not found: {path}")
    assert_same(client.predict(path, threshold=0.0), tiny_model.predict(path, threshold=0.0))


def test_default_threshold_is_the_servers(client: KeypointClient, tiny_model: RFDETRKeypoint) -> None:
    image = noise_image(120, 160, seed=9)
    remote = client.predict(image)  # rendered default threshold 0.5
    local = tiny_model.predict(image, threshold=0.5)
    assert len(remote) == len(local)
    assert np.all(remote.score > 0.5)


def test_async_client(server: TritonServer, tiny_model: RFDETRKeypoint) -> None:
    images = [noise_image(96 + 8 * i, 128, seed=i) for i in range(4)]

    async def run() -> list[KeypointDetections]:
        async with AsyncKeypointClient(server.grpc_url) as c:
            return await asyncio.gather(*(c.predict(img, threshold=0.0) for img in images))

    for remote, image in zip(asyncio.run(run()), images):
        assert_same(remote, tiny_model.predict(image, threshold=0.0))


def test_an_async_client_made_outside_the_event_loop(server: TritonServer, tiny_model: RFDETRKeypoint) -> None:
    image = noise_image(96, 128, seed=4)
    client = AsyncKeypointClient(server.grpc_url, timeout=60)  # no loop runs yet: the channel opens on first use

    async def run() -> KeypointDetections:
        assert await client.is_ready()
        return await client.predict(image, threshold=0.0)

    assert_same(asyncio.run(run()), tiny_model.predict(image, threshold=0.0))
    with pytest.raises(RemoteError, match="was first used in another event loop; make one per loop"):
        asyncio.run(run())
    asyncio.run(client.close())
    with pytest.raises(RemoteError, match="AsyncKeypointClient of .* is closed; make a new one"):
        asyncio.run(run())


def test_uint8_tensors_and_closed_clients(server: TritonServer, tiny_model: RFDETRKeypoint) -> None:
    import torch

    rgb = noise_image(90, 70, seed=6)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    with KeypointClient(server.grpc_url, timeout=60) as c:
        assert_same(c.predict(chw, threshold=0.0), tiny_model.predict(chw, threshold=0.0))
    with pytest.raises(RemoteError, match="KeypointClient of .* is closed; make a new one"):
        c.predict(rgb)
    with pytest.raises(RemoteError, match="is closed"):
        c.is_ready()
    c.close()  # again: nothing


def _raw_infer(url: str, name: str, array: np.ndarray, datatype: str) -> None:
    with grpcclient.InferenceServerClient(url) as c:
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        c.infer(P.ENSEMBLE, [tensor])


def test_bad_requests_get_their_own_errors_while_good_ones_succeed(
    server: TritonServer, client: KeypointClient
) -> None:
    good = noise_image(64, 80, seed=1)
    stop = threading.Event()
    good_results: list[int] = []
    good_errors: list[BaseException] = []

    def stream() -> None:
        with KeypointClient(server.grpc_url, timeout=60) as c:
            while not stop.is_set():
                try:
                    good_results.append(len(c.predict(good, threshold=0.0)))
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    good_errors.append(exc)

    def expect(call: Callable[[], object], *fragments: str) -> None:
        with pytest.raises(Exception) as info:
            call()
        message = str(info.value)
        for fragment in fragments:
            assert fragment in message, message

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        expect(lambda: client.predict(b"\x89PNG\r\n\x1a\n corrupt"), P.INPUT_BYTES, "corrupt")
        expect(lambda: client.predict(b""), P.INPUT_BYTES, "empty payload")
        expect(lambda: client.predict(png_header_only(10000, 10000)), "10000x10000", "max_pixels")
        expect(
            lambda: _raw_infer(server.grpc_url, P.INPUT_RAW, np.zeros((1, 8, 8, 3), np.float32), "FP32"),
            P.INPUT_RAW,
            "FP32",
        )
        expect(
            lambda: _raw_infer(server.grpc_url, P.INPUT_RAW, np.zeros((1, 8, 8, 4), np.uint8), "UINT8"),
            P.INPUT_RAW,
            "(N, H, W, 3)",
        )
        expect(
            lambda: _raw_infer(server.grpc_url, P.INPUT_RAW, np.zeros((1, 0, 8, 3), np.uint8), "UINT8"),
            "zero size",
        )
        expect(lambda: client.predict(good, threshold=1.5), "threshold")  # rejected by the client
        with grpcclient.InferenceServerClient(server.grpc_url) as raw_client:
            tensor = grpcclient.InferInput(P.INPUT_RAW, [1, 8, 8, 3], "UINT8")
            tensor.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
            limit = grpcclient.InferInput(P.INPUT_THRESHOLD, [1, 1], "FP32")
            limit.set_data_from_numpy(np.full((1, 1), 2.0, np.float32))
            expect(lambda: raw_client.infer(P.ENSEMBLE, [tensor, limit]), P.INPUT_THRESHOLD, "[0, 1]")
        with pytest.raises(RemoteError) as info:
            client.predict(b"not an image")
        assert info.value.status == "StatusCode.INVALID_ARGUMENT"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not good_errors, good_errors[:3]
    assert len(good_results) > 0 and all(n > 0 for n in good_results)
    assert server.poll() is None and client.is_ready()


def test_a_bad_threshold_fails_before_the_network_runs(server: TritonServer, client: KeypointClient) -> None:
    def network_runs() -> int:
        return int(client.statistics(P.NETWORK)["model_stats"][0]["inference_stats"]["success"].get("count", 0))  # absent while 0

    before = network_runs()
    with grpcclient.InferenceServerClient(server.grpc_url) as raw_client:
        image = grpcclient.InferInput(P.INPUT_BYTES, [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[encode(noise_image(64, 64, seed=2))]], dtype=np.object_))
        for bad in (1.5, float("nan"), -0.1):
            limit = grpcclient.InferInput(P.INPUT_THRESHOLD, [1, 1], "FP32")
            limit.set_data_from_numpy(np.full((1, 1), bad, np.float32))
            with pytest.raises(grpcclient.InferenceServerException, match=r"THRESHOLD must lie in \[0, 1\]"):
                raw_client.infer(P.ENSEMBLE, [image, limit])
    assert network_runs() == before  # refused by rfkp_preprocess, not after the network pass


def test_one_request_with_several_images(server: TritonServer, tiny_model: RFDETRKeypoint) -> None:
    images = [noise_image(60, 90, seed=11), noise_image(100, 40, seed=12)]
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        tensor = grpcclient.InferInput(P.INPUT_BYTES, [2, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[encode(im)] for im in images], dtype=np.object_))
        limit = grpcclient.InferInput(P.INPUT_THRESHOLD, [2, 1], "FP32")
        limit.set_data_from_numpy(np.zeros((2, 1), np.float32))
        result = c.infer(P.ENSEMBLE, [tensor, limit])
    counts = result.as_numpy(P.OUT_COUNT).reshape(-1)
    sizes = result.as_numpy(P.SOURCE_SIZE)
    assert sizes.tolist() == [[60, 90], [100, 40]]
    for i, image in enumerate(images):
        local = tiny_model.predict(image, threshold=0.0)
        assert counts[i] == len(local)
        np.testing.assert_allclose(result.as_numpy(P.OUT_BOXES)[i, : counts[i]], local.xyxy, atol=PIXEL_TOL)
