"""Many concurrent gRPC clients against a real server: zero failures and dynamic batches > 1.

The network is a micro random-initialised model (64 px, 2 ViT blocks) so that the serving machinery,
not the CPU forward pass, is what these tests load.
"""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc", reason="serving tests need the 'serving' extra (tritonclient[grpc])")

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from serving_helpers import launch_for_tests, noise_image

from rfkp.api import RFDETRKeypoint
from rfkp.client import KeypointClient
from rfkp.serving import protocol as P
from rfkp.serving.launcher import TritonServer
from rfkp.variants import tiny


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    config = tiny(resolution=64, vit_depth=2, out_feature_indexes=[1, 2], num_queries=10)
    weights = tmp_path_factory.mktemp("micro") / "micro.pth"
    RFDETRKeypoint.from_config(config, device="cpu").save_checkpoint(weights)
    triton = launch_for_tests(weights, tmp_path_factory.mktemp("served"), max_detections=20)
    try:
        yield triton
    finally:
        triton.stop()


def _batch_histogram(client: KeypointClient) -> dict[int, int]:
    stats = client.statistics(P.NETWORK)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def _stress(server: TritonServer, clients: int, requests: int) -> tuple[int, list[BaseException]]:
    images = [noise_image(48 + 16 * (i % 3), 64, seed=i) for i in range(clients)]
    errors: list[BaseException] = []

    def run(i: int) -> int:
        done = 0
        with KeypointClient(server.grpc_url, timeout=120) as c:
            for _ in range(requests):
                try:
                    c.predict(images[i], threshold=0.0)
                    done += 1
                except BaseException as exc:  # noqa: BLE001 - counted as a failure
                    errors.append(exc)
        return done

    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(run, range(clients)))
    return done, errors


@pytest.fixture(scope="module")
def client(server: TritonServer) -> Iterator[KeypointClient]:
    with KeypointClient(server.grpc_url, timeout=60) as c:
        yield c


def test_concurrent_clients_are_batched(server: TritonServer, client: KeypointClient) -> None:
    before = _batch_histogram(client)
    done, errors = _stress(server, clients=8, requests=50)
    assert not errors, errors[:3]
    assert done == 400
    after = _batch_histogram(client)
    executed = {b: after.get(b, 0) - before.get(b, 0) for b in after}
    assert sum(b * n for b, n in executed.items()) == 400
    assert any(n > 0 for b, n in executed.items() if b > 1), executed


@pytest.mark.slow
def test_sixteen_clients_two_thousand_requests(server: TritonServer, client: KeypointClient) -> None:
    before = _batch_histogram(client)
    done, errors = _stress(server, clients=16, requests=2000)
    assert not errors, errors[:3]
    assert done == 32000
    after = _batch_histogram(client)
    assert any(after.get(b, 0) - before.get(b, 0) > 0 for b in after if b > 1), after
    assert server.poll() is None
