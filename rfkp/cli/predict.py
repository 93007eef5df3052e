"""`rfkp predict IMAGE|DIR... --weights PATH`: annotated images and a JSON of the detections.

A folder stands for the images directly inside it. An image that cannot be read is reported and skipped; the
others are still predicted and written, and the exit status is 1 when any image failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rfkp.cli.arguments import non_empty_path, positive_float, positive_int, probability
from rfkp.devices import device_arg


def _image_suffixes() -> frozenset[str]:
    """File suffixes of the formats rfkp reads from folders: Pillow's extensions of ``rfkp.io.RASTER_FORMATS``."""
    from PIL import Image

    from rfkp.io import RASTER_FORMATS

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in RASTER_FORMATS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect keypoints in images", description=__doc__)
    p.add_argument("images", nargs="+", help="image files, or folders of images")
    p.add_argument("--weights", type=non_empty_path, help="rfkp or rfdetr keypoint checkpoint (default: the project's default model)")
    p.add_argument("--url", help="HOST:PORT of a running rfkp server (gRPC) instead of local weights")
    p.add_argument("--threshold", type=probability, default=None,
                   help=f"minimum rescored score (default {LOCAL_THRESHOLD}; with --url, the server's default, "
                        "set by rfkp serve --threshold)")
    p.add_argument("--resolution", type=positive_int, help="input resolution (multiple of patch size x windows)")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per request with --url (default 60)")
    p.add_argument("--out", default="rfkp_predictions", help="output folder (default: rfkp_predictions)")
    p.set_defaults(func=main)


PICTURE_SUFFIX = "_keypoints.png"
LOCAL_THRESHOLD = 0.5  # without --threshold and --url; a server applies its own default


def expand_images(items: list[str], out: Path | None = None) -> list[str]:
    """Files as given; a folder becomes its image files (by suffix, sorted). An empty folder is an error.
    In the output folder `out`, the pictures an earlier run wrote (``*_keypoints.png``) are not inputs."""
    paths: list[str] = []
    suffixes = _image_suffixes()
    for item in items:
        path = Path(item)
        if path.is_dir():
            own = out is not None and out.is_dir() and path.resolve() == out.resolve()
            found = sorted(
                str(p) for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in suffixes and not (own and p.name.endswith(PICTURE_SUFFIX))
            )  # fmt: skip
            if not found:
                raise FileNotFoundError(f"no image files (JPEG, PNG, TIFF, WebP, BMP, GIF, ...) in folder {path}")
            paths += found
        else:
            paths.append(item)
    return list(dict.fromkeys(paths))  # an image named twice (or a folder and a file in it) is predicted once


def picture_names(paths: list[str]) -> list[str]:
    """``<stem>_keypoints.png`` per image, all distinct: an image whose name is taken (same stem, or a stem
    like ``a_2`` meeting the second ``a``) gets ``_2``, ``_3``... in input order."""
    used: set[str] = set()
    names = []
    for path in paths:
        stem = Path(path).stem
        name, n = f"{stem}{PICTURE_SUFFIX}", 1
        while name in used:
            n += 1
            name = f"{stem}_{n}{PICTURE_SUFFIX}"
        used.add(name)
        names.append(name)
    return names


def _predictor(args: argparse.Namespace, closing: contextlib.ExitStack) -> Callable:
    if args.url:
        from rfkp.client import KeypointClient, RemoteError

        if args.weights or args.resolution or args.device:
            raise ValueError("--url sends the images to a server: --weights, --resolution and --device do not apply")
        client = closing.enter_context(KeypointClient(args.url, timeout=args.timeout))
        try:
            client.metadata  # noqa: B018 - one round trip: an unreachable server fails here, not once per image
        except RemoteError as exc:
            raise ConnectionError(f"no rfkp server answers at {args.url}: {exc}") from None
        return lambda path: client.predict(Path(path), threshold=args.threshold)  # None: the server's default
    from rfkp.api import RFDETRKeypoint

    model = RFDETRKeypoint.from_checkpoint(args.weights, args.device) if args.weights else RFDETRKeypoint.default(args.device)
    if model.is_random_init:
        print("warning: no --weights given and no trained default ships: using a RANDOM-INITIALISED model")
    threshold = LOCAL_THRESHOLD if args.threshold is None else args.threshold
    return lambda path: model.predict(path, threshold=threshold, resolution=args.resolution)


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    paths = expand_images(args.images, out)
    with contextlib.ExitStack() as closing:
        predict = _predictor(args, closing)  # a bad checkpoint or server stops here, before any output is written
        return _predict_all(paths, predict, out)


# gRPC statuses that mean the server (or its model) is gone rather than that an image was refused
SERVER_GONE = ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND")


def _predict_all(paths: list[str], predict: Callable, out: Path) -> int:
    from tqdm.auto import tqdm

    from rfkp.client import RemoteError  # no tritonclient import: that happens when a client is made
    from rfkp.viz import draw_detections

    out.mkdir(parents=True, exist_ok=True)
    (out / "errors.json").unlink(missing_ok=True)  # an earlier run's: this run writes its own if any fails
    results: dict[str, object] = {}
    errors: dict[str, str] = {}
    gone = None
    for path, name in zip(tqdm(paths, desc="predict", unit="image", disable=len(paths) < 2), picture_names(paths)):
        try:
            dets = predict(path)
        except RemoteError as exc:
            if exc.status in SERVER_GONE:  # not this image's fault: the rest would fail the same way
                gone = exc
                break
            errors[str(path)] = str(exc)
            print(f"{path}: error: {exc}", file=sys.stderr)
            continue
        except (OSError, ValueError, RuntimeError) as exc:  # unreadable or rejected image: report, go on
            errors[str(path)] = str(exc)
            print(f"{path}: error: {exc}", file=sys.stderr)
            continue
        draw_detections(path, dets).save(out / name)
        results[str(path)] = dets.to_dict()
        print(f"{path}: {len(dets)} detections -> {name}")
    (out / "detections.json").write_text(json.dumps(results, indent=1, allow_nan=False))
    if errors:
        (out / "errors.json").write_text(json.dumps(errors, indent=1, allow_nan=False))
    if results:
        print(f"wrote {out / 'detections.json'} and annotated images to {out}/"
              + (f"; {len(errors)} of {len(paths)} images failed (errors.json)" if errors else ""))  # fmt: skip
    elif errors:
        print(f"no image could be read: wrote {out / 'errors.json'} (and an empty {out / 'detections.json'})")
    if gone is not None:
        done = len(results) + len(errors)
        print(f"rfkp predict: error: the server stopped answering after {done} of {len(paths)} images, the rest "
              f"were not sent: {gone}", file=sys.stderr)  # fmt: skip
        return 1
    return 1 if errors else 0
