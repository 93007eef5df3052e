"""``rfkp train``: fine-tune or train an RF-DETR Keypoint model on a COCO keypoint dataset.

The architecture comes from ``--init`` (an rfkp or peer checkpoint, any skeleton: heads are resized) or from
``--variant``; classes, keypoints and skeletons come from the training file. With ``--nas`` every step samples a
sub-architecture (weight-sharing NAS), so ``rfkp search`` can later pick operating points from the one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rfkp import variants
from rfkp.cli.arguments import (
    float_in,
    non_negative_float,
    non_negative_int,
    path_option,
    positive_float,
    positive_int,
    positive_int_list,
    probability,
    seed_int,
)
from rfkp.devices import device_arg
from trainer.jsonfile import load_sigmas
from trainer.outputs import check_output_folder, check_outputs

logger = logging.getLogger(__name__)

#: Files of a run whose presence means --out holds one (the settings and command alone: it saved nothing yet).
RUN_RESULTS = ("checkpoint.pt", "last.pt", "best.pt", "metrics.jsonl")
#: Everything a run (with --calibrate) writes into --out.
RUN_FILES = (*RUN_RESULTS, "train_settings.json", "command.json", "best_calibrated.pt", "calibration.json",
             "calibration.png")
#: Model config fields that come from the training file, not from --set.
DATASET_FIELDS = ("num_classes", "num_keypoints_per_class", "class_names", "category_ids", "keypoint_names",
                  "skeletons")
#: --set refuses these too: training decides them (the targets' keypoint convention; calibration comes after)
TRAINING_FIELDS = ("coco_keypoint_offset", "covariance_scale")
_FLIP_PAIRS_FORM = 'a JSON object {category id or name or "*": [[i, j], ...]}, e.g. \'{"*": [[0, 3], [1, 2]]}\''


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train on a COCO keypoint dataset (any skeletons), with EMA, AMP, NAS sampling and exact resume",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    data = p.add_argument_group("data")
    data.add_argument("--data", type=path_option, required=True, help="training COCO keypoint JSON")
    data.add_argument("--images", type=path_option, required=True, help="image folder of --data")
    data.add_argument("--val", type=path_option, help="validation COCO keypoint JSON (model selection by OKS AP)")
    data.add_argument("--val-images", type=path_option, help="image folder of --val (default: --images)")
    data.add_argument("--flip-pairs", help='JSON {category id or name or "*": [[i, j], ...]} left/right pairs')
    data.add_argument("--side-tokens", help="extra left:right name tokens for flip pairs, e.g. LH:RH,LF:RF")
    data.add_argument("--sigmas", type=path_option, help="JSON {category: sigma or [per keypoint]} for the OKS of --val")
    data.add_argument("--calibrate", action="store_true",
                      help="after training, fit covariance factors on --val (rfkp calibrate, per class) and write "
                           "best_calibrated.pt, calibration.json and calibration.png")
    data.add_argument("--no-augment", action="store_true", help="no flip / crop augmentation")
    model = p.add_argument_group("model")
    model.add_argument("--out", type=path_option, required=True,
                       help="run directory (checkpoints, logs, metrics); one that holds a run needs --resume")
    model.add_argument("--init", type=path_option, help="start from this rfkp or rfdetr checkpoint (any skeleton)")
    model.add_argument("--variant", default="nano", choices=sorted(variants.VARIANTS),
                       help="architecture without --init (default nano)")
    model.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a model config field (JSON value), e.g. --set resolution=320; the classes, "
                            "keypoints and skeletons come from --data")
    model.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoint.pt")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=positive_int, default=50)
    opt.add_argument("--batch-size", type=positive_int, default=4)
    opt.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimiser step")
    opt.add_argument("--lr", type=positive_float, default=1e-4)
    opt.add_argument("--lr-backbone", type=non_negative_float, default=1.5e-4,
                     help="ViT rate before layer-wise decay (0: a frozen backbone)")
    opt.add_argument("--layer-decay", type=float_in(0.0, 1.0, low_open=True), default=0.8,
                     help="ViT layer-wise learning-rate decay, in (0, 1]")
    opt.add_argument("--weight-decay", type=non_negative_float, default=1e-4)
    opt.add_argument("--warmup-steps", type=non_negative_int, default=0)
    opt.add_argument("--clip-grad", type=non_negative_float, default=0.1, help="max gradient norm (0: off)")
    opt.add_argument("--ema-decay", type=float_in(0.0, 1.0, high_open=True), default=0.993, help="in [0, 1)")
    opt.add_argument("--ema-tau", type=non_negative_float, default=100.0,
                     help="EMA decay warm-up in optimiser steps (0: none)")
    opt.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                     help="autocast dtype (auto: bf16/fp16 on GPU, off on CPU)")
    opt.add_argument("--loss-weight", action="append", default=[], metavar="TERM=VALUE",
                     help="weight of one loss term (ce, bbox, giou, kp_l1, kp_findable, kp_visible, kp_nll), "
                          "e.g. --loss-weight kp_l1=5")
    opt.add_argument("--match-cost", action="append", default=[], metavar="TERM=VALUE",
                     help="weight of one Hungarian matching cost (cls, bbox, giou, kp_l1, kp_findable, kp_visible, "
                          "kp_nll), e.g. --match-cost kp_l1=5")
    opt.add_argument("--resolutions", type=positive_int_list, metavar="N,N,...",
                     help="multi-scale training sides, e.g. 320,352,384 (default: the model's)")
    nas = p.add_argument_group("weight-sharing NAS (every step samples a sub-architecture)")
    nas.add_argument("--nas", action="store_true", help="sample from the default space of the model (or below)")
    for axis, example in (("nas-resolutions", "256,320"), ("nas-patch-sizes", "12,16"), ("nas-windows", "1,2"),
                          ("nas-dec-layers", "1,2,3"), ("nas-num-queries", "50,100")):
        nas.add_argument(f"--{axis}", type=positive_int_list, metavar="N,N,...",
                         help=f"values of this axis, e.g. {example}")
    nas.add_argument("--nas-full-fraction", type=probability, default=0.25,
                     help="share of steps that train the full architecture (sandwich rule)")
    run = p.add_argument_group("run")
    run.add_argument("--device", type=device_arg, help="torch device (default: cuda if available)")
    run.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    run.add_argument("--seed", type=seed_int, default=0,
                     help="seed of every random draw, in [0, 2**32) (default 0)")
    run.add_argument("--eval-every", type=positive_int, default=1, help="epochs between validations")
    run.add_argument("--save-every", type=non_negative_int, default=0,
                     help="also save the training state every N steps (0: at epoch ends only)")
    run.add_argument("--max-steps", type=positive_int, help="stop (and save) after this many optimiser steps")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")
    p.set_defaults(func=main)
    return p


def _json_arg(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{option}: not valid JSON ({err.msg} at column {err.colno})") from None


def _side_tokens(text: str | None) -> list[tuple[str, str]]:
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        left, sep, right = item.partition(":")
        if not sep or not left or not right or ":" in right:
            raise ValueError(f"--side-tokens: expected LEFT:RIGHT pairs separated by commas, got {item!r}")
        pairs.append((left, right))
    return pairs


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "true or false", int: "a number",
               float: "a number", type(None): "null"}


def _flip_pairs(text: str | None) -> dict[str, Any] | None:
    """``--flip-pairs``: a JSON object of pair lists (the categories are checked once the data is read).

    Raises:
        ValueError: not JSON, not an object, or a value that is not a list of two-entry pairs.
    """
    spec = _json_arg(text, "--flip-pairs")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ValueError(f"--flip-pairs: expected {_FLIP_PAIRS_FORM}, got {_JSON_KINDS.get(type(spec), 'JSON')}")
    for key, pairs in spec.items():
        if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)):
            raise ValueError(
                f"--flip-pairs {key!r}: expected a list of [i, j] pairs (0-based indices or keypoint names), "
                f"got {json.dumps(pairs)}"
            )
    return spec


def _warn_sided_but_unpaired(schema: Any) -> None:
    """Warn per category about keypoints that look sided but have no flip partner (see --flip-pairs)."""
    from trainer.data.flip_pairs import sided_but_unpaired

    for category in schema.categories:
        names = sided_but_unpaired(category.keypoint_names, category.flip_pairs)
        if names:
            logger.warning(
                "category %r: keypoints %s look like one side of the body but have no flip partner; random "
                "horizontal flips will mirror them without swapping sides. Pass --flip-pairs (e.g. "
                "'{\"%s\": [[0, 3], [1, 2]]}' with your indices) or --side-tokens, or --no-augment",
                category.name, names, category.name,
            )  # fmt: skip


def _check_flip_pair_categories(spec: dict[str, Any] | None, schema: Any, source: str) -> None:
    """Raise ValueError for a ``--flip-pairs`` key that names no category of the data (it would be ignored)."""
    known = {"*"} | {str(c.category_id) for c in schema.categories} | {c.name for c in schema.categories}
    unknown = [key for key in spec or {} if key not in known]
    if unknown:
        categories = ", ".join(f"{c.category_id} ({c.name!r})" for c in schema.categories)
        raise ValueError(
            f"--flip-pairs: {source} has no category {unknown[0]!r}; the keys are a category id or name "
            f"({categories}) or \"*\" for every category"
        )


def _overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items (JSON values, else the text). Raises ValueError for a malformed item or a field
    that comes from the training file."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        if key in DATASET_FIELDS:
            raise ValueError(
                f"--set {key}: the classes, category ids, keypoint names and skeletons come from the training "
                f"file (--data); change its categories instead"
            )
        if key in TRAINING_FIELDS:
            raise ValueError(f"--set {key}: training sets it (keypoint targets are in rfkp's convention; "
                             "covariance factors come from rfkp calibrate)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _term_weights(items: list[str], defaults: Any, flag: str) -> Any:
    """``TERM=VALUE`` items over the fields of the dataclass instance ``defaults``."""
    from dataclasses import fields, replace

    names = [f.name for f in fields(defaults)]
    values: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ValueError(f"{flag} expects TERM=VALUE with TERM one of {names}, got {item!r}")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"{flag} {key}: {value!r} is not a number") from None
        if not (math.isfinite(values[key]) and values[key] >= 0):
            raise ValueError(f"{flag} {key}: must be a finite number >= 0, got {value}")
    return replace(defaults, **values)


def _nas_space(args: argparse.Namespace, cfg: Any) -> Any:
    axes = {
        "resolutions": args.nas_resolutions,
        "patch_sizes": args.nas_patch_sizes,
        "num_windows": args.nas_windows,
        "dec_layers": args.nas_dec_layers,
        "num_queries": args.nas_num_queries,
    }
    if not args.nas and not any(axes.values()):
        return None
    from trainer.nas.space import SearchSpace

    space = SearchSpace.for_config(cfg).override(**axes)
    space.check_model(cfg)
    return space


def _check_run_folder(args: argparse.Namespace) -> None:
    """Before any data is read: --out is a folder (or creatable), holds no run unless --resume, and none of the
    files a run writes there is an input.

    Raises:
        ValueError: --out holds a run without --resume, or a run file would overwrite an input.
        FileNotFoundError: --resume without a training state. NotADirectoryError: --out or a parent is a file.
    """
    out = check_output_folder(args.out, "--out")
    inputs = {"--data": args.data, "--val": args.val, "--sigmas": args.sigmas, "--init": args.init}
    for name in RUN_FILES:
        check_outputs({"--out": out / name}, inputs)
    if args.resume and not (out / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"no training state to resume from: {out / 'checkpoint.pt'}")
    if not args.resume:
        found = [name for name in RUN_RESULTS if (out / name).exists()]
        if found:
            raise ValueError(
                f"--out {out} already holds a run ({', '.join(found)}): pass --resume to continue it, or choose "
                f"another --out"
            )


def _run(args: argparse.Namespace) -> int:
    from rfkp.checkpoint import load_config_and_state
    from rfkp.config import ModelConfig
    from trainer.data.coco import CocoKeypointDataset
    from trainer.data.validate import require_labelled_keypoints
    from trainer.loop.build import build_network, model_config_for
    from trainer.loop.checkpoints import load_train_state
    from trainer.loop.optim import OptimizerSettings
    from trainer.loop.trainer import Trainer, TrainSettings
    from trainer.losses import LossWeights
    from trainer.matcher import MatchCosts

    # the options first, then the run folder, then the data: a mistake costs no data loading
    flip_pairs = _flip_pairs(args.flip_pairs)
    side_tokens = _side_tokens(args.side_tokens)
    overrides = _overrides(args.set)
    loss_weights = _term_weights(args.loss_weight, LossWeights(), "--loss-weight")
    match_costs = _term_weights(args.match_cost, MatchCosts(), "--match-cost")
    resolutions = list(args.resolutions) if args.resolutions else None
    if args.calibrate and args.val is None:
        raise ValueError("--calibrate needs --val: the covariance factors are fitted on held-out images")
    _check_run_folder(args)

    train_set = CocoKeypointDataset(args.data, args.images, flip_pairs=flip_pairs, side_tokens=side_tokens)
    require_labelled_keypoints(train_set.coco, args.data.name, "there is nothing to train on")
    shared = train_set.schema.shared_names()
    if shared:  # the trained model's classes would match no single category when it is evaluated
        name, ids = next(iter(shared.items()))
        raise ValueError(f"{args.data.name}: categories {ids} share the name {name!r}; give them distinct names")
    _check_flip_pair_categories(flip_pairs, train_set.schema, args.data.name)
    if not args.no_augment:
        _warn_sided_but_unpaired(train_set.schema)
    val_set = None
    if args.val is not None:
        val_set = CocoKeypointDataset(args.val, args.val_images or args.images, flip_pairs=flip_pairs,
                                      side_tokens=side_tokens)
        require_labelled_keypoints(val_set.coco, args.val.name, "validation would rank the epochs on nothing")
        val_k, train_k = (dict(zip(s.class_names, s.num_keypoints_per_class)) for s in (val_set.schema, train_set.schema))
        if val_k != train_k:  # validation matches classes to categories by name (ids and order may differ)
            raise ValueError(
                f"{args.val.name} and {args.data.name} describe different categories: {val_k} vs {train_k} "
                "(name: keypoints)"
            )
    # checked before training, not at the first validation
    sigmas = load_sigmas(args.sigmas, (val_set if val_set is not None else train_set).schema)

    resume_state = load_train_state(args.out / "checkpoint.pt") if args.resume else None
    if resume_state is not None:  # the run's own model: --init and --variant are not read again
        base, init = ModelConfig.from_dict(resume_state["config"]), None
        if args.init is not None:
            logger.info("--resume: the model and its weights come from the training state; --init %s is not read",
                        args.init)
    elif args.init is not None:
        init = load_config_and_state(args.init)  # read once: its architecture, then its tensors
        base = init[0]
        if base.covariance_scale:
            logger.info("--init %s carries covariance factors; they are dropped (they describe its covariances, "
                        "not the fine-tuned network's): run rfkp calibrate on the result", args.init)
    else:
        base, init = variants.VARIANTS[args.variant](), None
    config = model_config_for(train_set.schema, base, **overrides)
    network, report = build_network(config, init, seed=args.seed)
    del init  # the init checkpoint's tensors are no longer needed
    if report is not None:
        logger.info("initialised from %s: %s", args.init, report.summary())

    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        optimizer=OptimizerSettings(lr=args.lr, lr_backbone=args.lr_backbone, layer_decay=args.layer_decay,
                                    weight_decay=args.weight_decay),
        warmup_steps=args.warmup_steps,
        clip_grad=args.clip_grad,
        ema_decay=args.ema_decay,
        ema_tau=args.ema_tau,
        amp=args.amp,
        resolutions=resolutions,
        nas_full_fraction=args.nas_full_fraction,
        loss_weights=loss_weights,
        match_costs=match_costs,
        eval_every=args.eval_every,
        seed=args.seed,
        num_workers=args.workers,
        save_every_steps=args.save_every,
        max_steps=args.max_steps,
        augment=not args.no_augment,
        progress=not args.no_progress,
        tensorboard=not args.no_tensorboard,
    )
    trainer = Trainer(network, train_set, args.out, settings, val_set=val_set, nas=_nas_space(args, config),
                      device=args.device, sigmas=sigmas)
    if resume_state is not None:
        trainer.resume(state=resume_state)
        del resume_state  # two model copies and the optimiser state, no longer needed while training
    (args.out / "command.json").write_text(json.dumps({"argv": sys.argv, "config": config.to_dict()}, indent=2),
                                           encoding="utf-8")
    try:
        with _sigterm_as_interrupt():
            history = trainer.fit()
    except KeyboardInterrupt:
        saved = args.out / "checkpoint.pt"
        if saved.is_file():
            hint = (f"{saved} holds the state of the last epoch end or --save-every step: run the same command "
                    "with --resume to continue")  # fmt: skip
        else:
            hint = "no training state was saved yet: run the same command again (without --resume) to start over"
        print(f"rfkp train: interrupted; {hint}", file=sys.stderr)
        return 130
    print(f"run directory: {args.out}")
    print(_weights_message(args, history))
    if args.calibrate:
        _calibrate_best(args)
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) ends training as Ctrl-C does, with the resume hint; the main
    thread only, where signal handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _weights_message(args: argparse.Namespace, history: list[dict[str, Any]]) -> str:
    """Which inference weights the run left: best.pt by validation AP, or last.pt alone (no validation yet), or
    last.pt and its copy best.pt (no --val)."""
    best, last = args.out / "best.pt", args.out / "last.pt"
    validated = max((r for r in history if "ap" in r), key=lambda r: r["ap"], default=None)
    ap = "" if validated is None else f", val AP {validated['ap']:.4f}"
    if args.val is None and validated is None:
        return f"weights: {last} (EMA), also as {best} (no --val to select by)"
    if args.val is None:  # a validated run resumed without --val keeps its best.pt
        return f"weights: {last} (EMA); {best} stays the validated best{ap}"
    if not best.is_file() and validated is None:
        return f"weights: {last} (EMA; no best.pt: the run stopped before its first validation)"
    if not best.is_file():
        return (f"weights: {last} (EMA; best.pt is missing, and no validation since beat its val AP "
                f"{validated['ap']:.4f})")
    return f"weights: {best} (EMA{ap}), {last}"


def _calibrate_best(args: argparse.Namespace) -> None:
    """``rfkp calibrate`` on best.pt with --val; a failure (nothing matched yet) is reported, the run stands."""
    from trainer.calibrate_cli import calibrate, calibrate_options, format_calibration, report_json

    argv = ["--weights", str(args.out / "best.pt"), "--data", str(args.val), "--images", str(args.val_images or args.images),
            "--out", str(args.out / "best_calibrated.pt"), "--plot", str(args.out / "calibration.png")]  # fmt: skip
    argv += ["--sigmas", str(args.sigmas)] if args.sigmas else []
    argv += ["--device", args.device] if args.device else []
    argv += ["--no-progress"] if args.no_progress else []
    options = calibrate_options(argv)
    if not options.weights.is_file():
        print("no calibration: the run wrote no best.pt (it stopped before its first validation)", file=sys.stderr)
        return
    try:
        report = calibrate(options)
    except (ValueError, OSError) as err:  # the run stands: only its calibrated copy is missing
        print(f"no calibration: {err}", file=sys.stderr)
        return
    (args.out / "calibration.json").write_text(report_json(report), encoding="utf-8")
    print(format_calibration(report))
    print(f"calibrated weights: {options.out}")


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    return [folder for folder in (path, *path.parents) if not folder.exists()]


def main(args: argparse.Namespace) -> int:
    """Train. Returns 0; bad input or a diverged run raises (ValueError, OSError), which ``rfkp.cli.main`` prints as
    one line with exit status 1. A run that failed before writing anything leaves no empty --out behind."""
    new_folders = _missing_folders(args.out)
    try:
        return _run(args)  # bad input raises ValueError / OSError (NonFiniteTrainingError too): rfkp.cli.main prints it
    finally:
        for folder in new_folders:  # deepest first; stops at the first that holds something
            try:
                folder.rmdir()
            except OSError:
                break
