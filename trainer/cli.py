"""``rfkp eval``: COCO OKS AP/AR per category and keypoint calibration.

Detections come from a checkpoint (``--weights``, run through ``RFDETRKeypoint.predict``) or from a COCO
keypoint results file (``--detections``). Register with ``add_eval_parser(subparsers)``; ``eval_main(args)``
returns the exit status (0 ok, 1 bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rfkp.cli.arguments import path_option, positive_int, probability
from rfkp.devices import device_arg
from trainer.data.schema import DatasetSchema
from trainer.data.validate import check_image_files, check_image_sizes, load_labelled_coco
from trainer.evaluation.coco_eval import evaluate_keypoints
from trainer.evaluation.plots import reliability_plot
from trainer.evaluation.predict import predict_rows
from trainer.evaluation.report import format_report, report_to_dict
from trainer.evaluation.sigmas import DEFAULT_SIGMA
from trainer.jsonfile import dumps_strict, load_json, load_sigmas
from trainer.outputs import check_outputs, check_plot_file, write_text

#: Options that only apply to running a model (--weights), with their defaults there.
MODEL_OPTIONS = {"images": None, "threshold": 0.001, "resolution": None, "device": None, "batch_size": 4}


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "eval",
        help="COCO keypoint AP/AR per category and calibration of the keypoint Gaussians",
        description=(
            "Evaluate keypoint detections against a COCO keypoint file: OKS AP/AR per category over all images "
            "(pycocotools), and the fraction of ground-truth keypoints inside the predicted 1/2/3-sigma ellipses."
        ),
    )
    parser.add_argument("--data", type=path_option, required=True, help="COCO keypoint annotation JSON")
    parser.add_argument("--images", type=path_option, help="image folder of --data (needed with --weights)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", type=path_option, help="model checkpoint to run on every image")
    source.add_argument("--detections", type=path_option, help="COCO keypoint results JSON (a list of rows)")
    parser.add_argument(
        "--sigmas",
        type=path_option,
        help=f"JSON object {{category id or name: sigma or [one per keypoint]}}; default COCO's for the "
        f"17-keypoint person, {DEFAULT_SIGMA} otherwise",
    )
    parser.add_argument("--threshold", type=probability, help="score threshold with --weights (default 0.001)")
    parser.add_argument("--resolution", type=positive_int, help="inference resolution with --weights")
    parser.add_argument("--device", type=device_arg, help="torch device with --weights (default: cuda if available)")
    parser.add_argument("--batch-size", type=positive_int, help="images per forward pass with --weights (default 4)")
    parser.add_argument("--plot", type=path_option, help="write the calibration reliability plot (PNG) here")
    parser.add_argument("--save-detections", type=path_option, help="write the detections as COCO results JSON")
    parser.add_argument("--json", type=path_option, dest="json_out", help="write the full report as JSON")
    parser.set_defaults(func=eval_main)
    return parser


def _predict_rows(
    args: argparse.Namespace, coco: dict[str, Any], schema: DatasetSchema
) -> list[dict[str, Any]]:
    from rfkp.api import RFDETRKeypoint

    if args.images is None:
        raise ValueError("--images is required with --weights")
    check_image_files(coco, args.images, args.data.name)
    check_image_sizes(coco, args.images, args.data.name)  # predictions and ground truth in one pixel frame
    model = RFDETRKeypoint.from_checkpoint(args.weights, device=args.device)
    return predict_rows(
        model, coco, args.images, schema, threshold=args.threshold, resolution=args.resolution,
        batch_size=args.batch_size, progress=True,
    )


def _check_options(args: argparse.Namespace) -> None:
    """What can be refused before anything is read: outputs that would overwrite an input or cannot be written,
    and model options given with --detections (they would be ignored). Fills in the model options' defaults.

    Raises:
        ValueError, OSError: naming the option.
    """
    outputs = {"--save-detections": args.save_detections, "--json": args.json_out, "--plot": args.plot}
    inputs = {"--data": args.data, "--detections": args.detections, "--weights": args.weights, "--sigmas": args.sigmas}
    check_outputs(outputs, inputs)
    check_plot_file(args.plot, "--plot")
    if args.detections is not None:
        given = [f"--{name.replace('_', '-')}" for name in MODEL_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} only apply with --weights (running a model); --detections are evaluated "
                f"as they are"
            )
    for name, default in MODEL_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def eval_main(args: argparse.Namespace) -> int:
    """Run the evaluation and print the report. Returns 0; bad input raises ValueError or OSError (CocoFormatError
    too), which the command line prints as one line."""
    _check_options(args)
    coco, schema, _ = load_labelled_coco(args.data, "there is nothing to evaluate against")
    sigmas = load_sigmas(args.sigmas, schema)
    if args.weights is not None:
        rows = _predict_rows(args, coco, schema)
    else:
        rows = load_json(args.detections, "detections")
        if not isinstance(rows, list):
            hint = ""
            if isinstance(rows, dict) and all(isinstance(v, dict) and "xyxy" in v for v in rows.values()):
                hint = (" (this looks like rfkp predict's detections.json: per image, convert with "
                        "KeypointDetections.from_dict(d).to_coco_results(image_id), or pass --weights and --images "
                        "to run the model here)")
            raise ValueError(f"{args.detections.name}: expected a JSON list of COCO keypoint result rows{hint}")
    results_source = args.detections.name if args.detections is not None else None
    report = evaluate_keypoints(coco, rows, sigmas=sigmas, source=args.data.name, schema=schema,
                                results_source=results_source)  # fmt: skip
    print(format_report(report))
    if args.save_detections:
        write_text(args.save_detections, json.dumps(rows))
    if args.json_out:
        write_text(args.json_out, dumps_strict(report_to_dict(report), indent=2))
    if args.plot:
        if not report.num_detections:
            print("rfkp eval: no plot: there are no detections", file=sys.stderr)
        elif report.calibration is None:
            print("rfkp eval: no plot: the detections carry no keypoint_covariance", file=sys.stderr)
        else:
            print(f"reliability plot: {reliability_plot(report.calibration, args.plot)}")
    return 0


#: The names the rfkp CLI registers subcommand modules by.
add_parser = add_eval_parser
main = eval_main
