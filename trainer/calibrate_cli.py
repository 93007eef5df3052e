"""``rfkp calibrate``: fit covariance factors on held-out images and write a calibrated checkpoint.

The model runs once over ``--data`` (images it was not trained on); ground-truth keypoints are matched to
detections as in ``rfkp eval`` (OKS 0.5); the factors that make the ``--level``-sigma ellipses cover their
nominal share are fitted per class (``--by``) and stored in the checkpoint's ``covariance_scale``, which
``predict()``, exported graphs and the server apply. Scores, boxes and keypoints are unchanged. The report
gives the coverage before, after (on the fitting images) and cross-validated over images (fitted without the
image measured: what to expect on new images).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from rfkp.cli.arguments import float_in, non_negative_int, path_option, positive_int, probability
from rfkp.devices import device_arg
from trainer.evaluation.calibration import SIGMA_LEVELS, CalibrationResult, nominal_coverage
from trainer.evaluation.covariance_scale import (
    FIT_MODES,
    apply_covariance_scale,
    cross_validate,
    fit_covariance_scale,
)
from trainer.jsonfile import dumps_strict
from trainer.outputs import check_outputs, check_plot_file, write_text

KINDS = ("visible", "occluded", "all")
#: --level: below 0.5 sigma the ellipse holds under 12 % of the keypoints, above 3 over 99 %; beyond either the
#: fitted quantile is that of a handful of extreme errors, and the factors run to absurd sizes.
LEVEL_RANGE = (0.5, 3.0)


def _folds(text: str) -> int:
    """``--folds``: 0 (one fold per image) or at least 2."""
    value = non_negative_int(text)
    if value == 1:
        raise argparse.ArgumentTypeError("expected 0 (one fold per image) or an integer >= 2, got 1")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate",
        help="fit covariance factors on held-out images so the keypoint ellipses cover what they claim",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    p.add_argument("--weights", type=path_option, required=True, help="rfkp or rfdetr checkpoint to calibrate")
    p.add_argument("--data", type=path_option, required=True, help="COCO keypoint JSON of images the model was not trained on")
    p.add_argument("--images", type=path_option, required=True, help="image folder of --data")
    p.add_argument("--out", type=path_option, required=True, help="calibrated checkpoint to write (not --weights)")
    p.add_argument("--by", choices=FIT_MODES, default="class", help="one factor overall, per class or per keypoint")
    p.add_argument("--level", type=float_in(*LEVEL_RANGE, why=" sigmas (the ellipse holding 12 % to 99 % of a Gaussian)"),
                   default=2.0, help="n-sigma ellipse whose coverage is made nominal, in [0.5, 3] (default 2)")
    p.add_argument("--fit-on", choices=KINDS, default="visible", help="which labelled keypoints to fit on")
    p.add_argument("--min-count", type=positive_int, default=20,
                   help="groups with fewer keypoints take their parent's factor (keypoint -> class -> global)")
    p.add_argument("--folds", type=_folds, default=0,
                   help="cross-validation folds over images, >= 2 (default 0: one per image, also when there are "
                        "fewer images than folds)")
    p.add_argument("--sigmas", type=path_option, help="JSON {category: sigma or [per keypoint]} for the OKS matching")
    p.add_argument("--threshold", type=probability, default=0.001, help="score threshold of the detections")
    p.add_argument("--resolution", type=positive_int,
                   help="input side to fit at (default: the model's); the calibrated checkpoint then runs at it, "
                        "since its factors hold there")
    p.add_argument("--device", type=device_arg, help="torch device (default: cuda if available)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per forward pass")
    p.add_argument("--plot", type=path_option, help="write the reliability plot (before / after / cross-validated) here")
    p.add_argument("--json", type=path_option, dest="json_out", help="write the report as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=main)
    return p


def calibrate_options(argv: list[str]) -> argparse.Namespace:
    """The options of ``rfkp calibrate ARGV...`` (its defaults for what ARGV leaves out), for callers in code."""
    parser = argparse.ArgumentParser(prog="rfkp")
    add_parser(parser.add_subparsers()).prog = "rfkp calibrate"
    return parser.parse_args(["calibrate", *argv])


def _check_outputs(args: argparse.Namespace) -> None:
    """Before anything is read: no output names an input (or another output), each can be written, the plot's
    format is known.

    Raises:
        ValueError, OSError: naming the option.
    """
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; name the checkpoint file to write")
    outputs = {"--out": args.out, "--json": args.json_out, "--plot": args.plot}
    check_outputs(outputs, {"--weights": args.weights, "--data": args.data, "--sigmas": args.sigmas})
    check_plot_file(args.plot, "--plot")


def _check_options(args: argparse.Namespace, coco: dict[str, Any]) -> None:
    """What can be refused before the model runs over every image (the numbers were checked while parsing;
    callers in code go through ``calibrate_options``, which parses too)."""
    wanted = {"visible": (2,), "occluded": (1,), "all": (1, 2)}[args.fit_on]
    if not any(v in wanted for ann in coco["annotations"] for v in ann["keypoints"][2::3]):
        raise ValueError(f"{args.data.name} labels no {args.fit_on} keypoints to fit on (--fit-on)")


def _coverage(result: CalibrationResult, kind: str) -> dict[str, Any]:
    n = int(result.distances(kind).size)
    cover = result.coverage(kind) if n else {k: None for k in SIGMA_LEVELS}
    return {"count": n, **{f"{k}_sigma": cover[k] for k in SIGMA_LEVELS}}


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the model, fit, write ``--out``; returns the report. Raises ValueError etc. for bad input."""
    import dataclasses

    from rfkp.api import RFDETRKeypoint
    from rfkp.checkpoint import stored_float_dtype
    from trainer.data.validate import check_image_files, check_image_sizes, load_labelled_coco
    from trainer.evaluation.coco_eval import evaluate_keypoints
    from trainer.evaluation.predict import predict_rows
    from trainer.evaluation.results import class_categories
    from trainer.jsonfile import load_sigmas

    _check_outputs(args)
    coco, schema, _ = load_labelled_coco(args.data, "there is nothing to calibrate on")
    _check_options(args, coco)
    check_image_files(coco, args.images, args.data.name)
    check_image_sizes(coco, args.images, args.data.name)
    sigmas = load_sigmas(args.sigmas, schema)
    dtype = stored_float_dtype(args.weights)  # the calibrated file keeps the size of --weights
    model = RFDETRKeypoint.from_checkpoint(args.weights, device=args.device)
    config = model.config
    categories = class_categories(config.class_names, schema, config.num_keypoints_per_class)[
        : len(config.num_keypoints_per_class)
    ]
    missing = [config.class_names[c] for c, cat in enumerate(categories) if cat is None]
    if missing:
        raise ValueError(f"{args.data.name} has no category for the keypointed classes {missing}")
    category_ids = [cat.category_id for cat in categories]  # type: ignore[union-attr]
    num_keypoints = list(config.num_keypoints_per_class)

    rows = predict_rows(model, coco, args.images, schema, threshold=args.threshold, resolution=args.resolution,
                        batch_size=args.batch_size, progress=getattr(args, "progress", True))  # fmt: skip
    report = evaluate_keypoints(coco, rows, sigmas=sigmas, source=args.data.name, schema=schema)
    errors = report.errors
    if not rows:
        raise ValueError(f"the model detected nothing on {args.data.name} above --threshold {args.threshold:g}: "
                         "nothing to fit on")  # fmt: skip
    if errors is None or not len(errors):
        raise ValueError(f"no detection matched a ground truth of {args.data.name} at OKS 0.5: nothing to fit on")
    options = {"by": args.by, "level": args.level, "kind": args.fit_on, "min_count": args.min_count}
    fit = fit_covariance_scale(errors, category_ids, num_keypoints, **options)
    after = apply_covariance_scale(errors, fit.scales, category_ids)
    try:
        crossed, why_not = cross_validate(errors, category_ids, num_keypoints, folds=args.folds, **options), None
    except ValueError as exc:  # one image only, or a fold whose complement has nothing to fit on
        crossed, why_not = None, str(exc)

    previous = config.covariance_scale_table()
    total = [[float(fit.scales[c][j] * (previous[c][j] if previous else 1.0)) for j in range(k)]
             for c, k in enumerate(num_keypoints)]  # fmt: skip
    # the factors hold at the resolution they were fitted at: the calibrated checkpoint runs there
    resolution = args.resolution or config.resolution
    model.network.cfg = dataclasses.replace(config, covariance_scale=total, resolution=resolution)
    model.save_checkpoint(args.out, dtype=dtype)

    results = {"before": errors.calibration(), "after (fitted images)": after.calibration()}
    if crossed is not None:
        results["cross-validated"] = crossed.calibration()
    out = {
        "weights": args.weights.name,
        "out": args.out.name,
        "data": args.data.name,
        "images": len(coco["images"]),
        "images_with_matches": int(np.unique(errors.image_id).size),
        "settings": {**options, "folds": args.folds, "threshold": args.threshold, "resolution": args.resolution},
        "resolution": resolution,
        "resolution_changed_from": config.resolution if resolution != config.resolution else None,
        "keypoint_ap": report.overall["AP"],
        "classes": [
            {"name": config.class_names[c], "category_id": category_ids[c],
             "keypoints": list(config.keypoint_names[c]), "fitted_factor": fit.scales[c],
             "covariance_scale": total[c], "count": fit.counts[c], "source": fit.sources[c]}
            for c in range(len(num_keypoints))
        ],  # fmt: skip
        "coverage": {name: {kind: _coverage(r, kind) for kind in KINDS} for name, r in results.items()},
        "ideal": {f"{k}_sigma": nominal_coverage(k) for k in SIGMA_LEVELS},
        "cross_validation_skipped": why_not,
    }
    if args.plot:
        from trainer.evaluation.plots import reliability_comparison_plot

        kind = "visible" if args.fit_on == "visible" else "all"
        out["plot"] = str(reliability_comparison_plot(results, args.plot, kind=kind))
    return out


def report_json(report: dict[str, Any]) -> str:
    """The report as strict JSON text (NaN and infinities as null)."""
    return dumps_strict(report, indent=1) + "\n"


def format_calibration(report: dict[str, Any]) -> str:
    lines = [f"images: {report['images']}   keypoint AP (unchanged): {report['keypoint_ap']:.3f} at "
             f"{report['resolution']} px"]
    if report.get("resolution_changed_from"):
        lines.append(f"the calibrated checkpoint runs at {report['resolution']} px (was "
                     f"{report['resolution_changed_from']}): its factors were fitted there")
    lines.append("")
    lines.append("covariance factors (x the model's covariances):")
    for cls in report["classes"]:
        factors = cls["fitted_factor"]
        if len(set(factors)) == 1:
            lines.append(f"  {cls['name']}: {factors[0]:.3f}  (fitted on {cls['count'][0]} keypoints, {cls['source'][0]})")
            continue
        lines.append(f"  {cls['name']}:")
        for name, f, n, src in zip(cls["keypoints"], factors, cls["count"], cls["source"]):
            lines.append(f"    {name:<16} {f:8.3f}  (n={n}, {src})")
    ideal = " / ".join(f"{100 * v:.1f}" for v in report["ideal"].values())
    lines += ["", f"ground-truth keypoints inside the 1/2/3-sigma ellipses, % (ideal {ideal}):"]
    for name, by_kind in report["coverage"].items():
        for kind in ("visible", "occluded"):
            c = by_kind[kind]
            if c["count"]:
                shown = " / ".join(f"{100 * c[f'{k}_sigma']:.1f}" for k in SIGMA_LEVELS)
                lines.append(f"  {name:<22} {kind:<9} {shown}   (n={c['count']})")
    if report.get("cross_validation_skipped"):
        lines.append(f"  no cross-validation: {report['cross_validation_skipped']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    report = calibrate(args)  # bad input raises ValueError / OSError: rfkp.cli.main prints it
    print(format_calibration(report))
    print(f"\ncalibrated checkpoint: {args.out}")
    if args.json_out:
        write_text(args.json_out, report_json(report))
    if "plot" in report:
        print(f"reliability plot: {report['plot']}")
    return 0
