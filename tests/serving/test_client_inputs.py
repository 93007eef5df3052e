"""Client-side checks of `rfkp.client` (no server): what is sent for each kind of image, what is refused and
how, the URL forms, and the channel settings that let a client survive a server restart."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc", reason="serving tests need the 'serving' extra (tritonclient[grpc])")

import os
import re

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from rfkp.client import RECONNECT_BACKOFF_MS, _channel_args, build_inputs, check_url
from rfkp.serving import protocol as P


def _raw(inputs: list) -> tuple[str, list[int]]:
    return inputs[0].name(), inputs[0].shape()


def test_every_layout_in_process_predict_reads_is_sent_as_an_rgb_frame() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for image in (rgb, rgb[:, :, 0], rgb[:, :, :1], np.dstack([rgb, rgb[:, :, :1]]), rgb[::-1],
                  Image.fromarray(rgb), Image.fromarray(rgb).convert("LA")):  # fmt: skip
        assert _raw(build_inputs(image)) == (P.INPUT_RAW, [1, 20, 30, 3])


def test_paths_are_checked_as_in_process_predict_checks_them(tmp_path) -> None:
    fifo = tmp_path / "frame.png"
    os.mkfifo(fifo)
    for path, error, message in [
        ("", ValueError, "got an empty path"),
        ("http://example.com/x.png", ValueError, "URLs are not fetched: download 'http://example.com/x.png'"),
        (str(fifo), ValueError, "is not a regular file"),
        (str(tmp_path / "missing.png"), FileNotFoundError, "image file not found"),
        (str(tmp_path), IsADirectoryError, "expected an image file"),
    ]:
        with pytest.raises(error, match=message):
            build_inputs(path)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=re.escape("convert an image in [0, 1] with (tensor * 255).round().clamp(0, 255)")):
        build_inputs(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="got a numpy array of dtype float32"):
        build_inputs(np.zeros((4, 4, 3), np.float32))


def test_urls() -> None:
    for bad in ("127.0.0.1:\u00b2", "127.0.0.1:\u0661\u0662"):  # digits str.isdigit() accepts and int() may not
        with pytest.raises(ValueError, match="HOST:PORT"):
            check_url(bad)


def test_reconnect_backoff_is_short_and_the_defaults_are_kept() -> None:
    args = dict(_channel_args(grpcclient))
    assert args["grpc.max_reconnect_backoff_ms"] == RECONNECT_BACKOFF_MS <= 1000
    assert args["grpc.max_send_message_length"] == args["grpc.max_receive_message_length"] == 2**31 - 1


def test_predict_url_stops_when_the_server_goes_away(tmp_path, capsys) -> None:
    """`rfkp predict --url`: a server that stops answering ends the run with one error; the images not sent
    are not reported as failed images."""
    from rfkp.cli.predict import _predict_all
    from rfkp.client import RemoteError
    from rfkp.detections import KeypointDetections

    paths = []
    for i in range(4):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
        paths.append(str(path))
    calls = []

    def answer(path: str) -> KeypointDetections:
        calls.append(path)
        if len(calls) == 1:
            return KeypointDetections.empty(class_names=["a"], keypoint_names=[["p"]], image_size=(8, 8))
        if len(calls) == 2:
            raise RemoteError("IMAGE_BYTES[0]: corrupt", "StatusCode.INVALID_ARGUMENT")  # this image's fault
        raise RemoteError("failed to connect to all addresses", "StatusCode.UNAVAILABLE")

    assert _predict_all(paths, answer, tmp_path / "out") == 1
    assert len(calls) == 3  # the fourth image was not sent
    err = capsys.readouterr().err
    assert "the server stopped answering after 2 of 4 images, the rest were not sent" in err
    assert list(__import__("json").loads((tmp_path / "out" / "errors.json").read_text())) == [paths[1]]


@pytest.mark.parametrize(("given", "sent"), [([], None), (["--threshold", "0.3"], 0.3)])
def test_predict_url_sends_a_threshold_only_when_given(given: list, sent: float | None, tmp_path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Without --threshold, `rfkp predict --url` leaves the threshold to the server (rfkp serve --threshold)."""
    import contextlib

    import rfkp.client
    from rfkp.cli.main import build_parser
    from rfkp.cli.predict import _predictor

    calls = []

    class Recording:
        def __init__(self, url: str, timeout: float) -> None:
            self.metadata = None

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def predict(self, image: object, threshold: float | None = None) -> None:
            calls.append(threshold)

    monkeypatch.setattr(rfkp.client, "KeypointClient", Recording)
    args = build_parser().parse_args(["predict", "--url", "127.0.0.1:8001", "x.png", *given])
    with contextlib.ExitStack() as closing:
        _predictor(args, closing)("x.png")
    assert calls == [sent]
    help_text = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert "default 0.5; with --url, the server's default" in " ".join(help_text.split())


def test_uint8_tensors_predict_reads_are_sent_as_rgb_frames() -> None:
    torch = pytest.importorskip("torch")
    chw = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    (sent,) = build_inputs(chw)
    assert (sent.name(), sent.shape()) == (P.INPUT_RAW, [1, 20, 30, 3])
    assert _raw(build_inputs(chw[:1])) == (P.INPUT_RAW, [1, 20, 30, 3])  # grey (1, H, W)
    assert _raw(build_inputs(chw[:, ::2].transpose(1, 2))) == (P.INPUT_RAW, [1, 30, 10, 3])  # not contiguous
    with pytest.raises(ValueError, match=re.escape("for channels last (H, W, C) send tensor.cpu().numpy()")):
        build_inputs(chw.permute(1, 2, 0))
    with pytest.raises(ValueError, match=re.escape("expected a dense (C, H, W) tensor with C 1 or 3")):
        build_inputs(chw[None])
