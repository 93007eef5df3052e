"""The served quick start: start the embedded Triton server, send one image over gRPC, save the answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rfkp.detections import KeypointDetections
from rfkp.serving.deploy import RANDOM_INIT_WARNING, RUN_STAMP, launch
from rfkp.serving.repository import ServingOptions

__all__ = ["serve_and_predict"]


def serve_and_predict(
    image: Path | str,
    out_dir: Path | str,
    *,
    weights: Path | str | None = None,
    threshold: float = 0.3,
    ready_timeout: float = 180.0,
) -> KeypointDetections:
    """Start a server on free loopback ports with ``weights`` (default: the project's default model),
    send ``image``'s encoded bytes over gRPC, print a summary, write ``out_dir/detections.json``,
    and stop the server (always). The server's run folder ``out_dir/server_run`` is removed after a
    successful request and kept, with its log, after a failure.

    Returns:
        The detections the server answered, in ``image``'s pixels.
    """
    from rfkp.client import KeypointClient

    image = Path(image)
    if not image.is_file():
        raise FileNotFoundError(f"image not found: {image}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "server_run"
    if run_dir.exists() and not (run_dir / RUN_STAMP).exists():  # unstamped: not a live server's, clear it
        shutil.rmtree(run_dir)
    # a stamped one is launch()'s to judge: reused after a finished demo, refused while another is running
    server, prepared = launch(
        weights,
        options=ServingOptions(threshold=threshold),
        run_dir=run_dir,
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        ready_timeout=ready_timeout,
    )
    try:
        if prepared.random_init:
            print(f"NOTE: {RANDOM_INIT_WARNING}")
        print(f"Triton server ({server.installation.kind}) ready on gRPC {server.grpc_url}")
        with KeypointClient(server.grpc_url) as client:
            dets = client.predict(image)
    finally:
        server.stop()
    # the run folder (rendered repository, a link to the graph, the server log) is kept only after a failure
    shutil.rmtree(run_dir, ignore_errors=True)
    (out / "detections.json").write_text(json.dumps(dets.to_dict(), indent=1, allow_nan=False))
    print(f"{len(dets)} detections on {image.name} (over gRPC, threshold {threshold}); wrote {out / 'detections.json'}")
    for i in range(min(len(dets), 5)):
        name = dets.class_names[int(dets.class_id[i])]
        print(f"  {name:>10s} score {dets.score[i]:.3f} box {[round(float(v), 1) for v in dets.xyxy[i]]}")
    return dets
