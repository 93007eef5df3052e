"""``rfkp search``: score the sub-architectures of a weight-sharing checkpoint and write the Pareto front.

Writes into ``--out``: ``search.csv`` (every choice), ``pareto.csv`` (the front), ``pareto.png`` and
``search.json`` (device, torch version, date, command, space, every result). ``main(args)`` returns the exit
status (0 ok, 1 bad input).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rfkp.cli.arguments import (
    non_negative_int,
    path_option,
    positive_float,
    positive_int,
    positive_int_list,
    probability,
    seed_int,
)
from rfkp.devices import device_arg
from trainer.jsonfile import dumps_strict, load_sigmas
from trainer.nas.space import ArchChoice, SearchSpace
from trainer.outputs import check_output_folder, check_outputs

#: The files written into --out.
OUT_FILES = ("search.csv", "pareto.csv", "pareto.png", "search.json")

# (flag, attribute, search space axis, help) of the options that set an axis of the space
_AXIS_OPTIONS = (
    ("--resolutions", "resolutions", "resolutions", "input sides in pixels, e.g. 480,576,672"),
    ("--patch-sizes", "patch_sizes", "patch_sizes", "ViT patch sizes, e.g. 12,16"),
    ("--windows", "windows", "num_windows", "attention windows per side, e.g. 1,2"),
    ("--dec-layers", "dec_layers", "dec_layers", "decoder layers run, e.g. 1,2,3,4"),
    ("--num-queries", "num_queries", "num_queries", "object queries, e.g. 25,50,100"),
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``search`` subcommand to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "search",
        help="accuracy/latency search over the sub-architectures of a weight-sharing checkpoint",
        description=(
            "Evaluate every sub-architecture of a search space (resolution, patch size, windows, decoder "
            "layers, queries) with the same weights: OKS AP on a COCO keypoint validation set and batch-1 "
            "latency on this device. Writes search.csv, pareto.csv, pareto.png and search.json into --out. "
            "Each axis defaults to a space around the checkpoint's own architecture."
        ),
    )
    parser.add_argument("--weights", type=path_option, required=True, help="weight-sharing model checkpoint")
    parser.add_argument("--data", type=path_option, required=True, help="COCO keypoint validation JSON")
    parser.add_argument("--images", type=path_option, required=True, help="image folder of --data")
    parser.add_argument("--out", type=path_option, required=True, help="output folder")
    for flag, dest, _, text in _AXIS_OPTIONS:
        parser.add_argument(flag, dest=dest, type=positive_int_list, metavar="N,N,...",
                            help=f"{text} (default: around the model's)")
    parser.add_argument("--device", type=device_arg, help="torch device (default: cuda if available)")
    parser.add_argument("--runs", type=positive_int, default=30, help="timed batch-1 runs per choice (default 30)")
    parser.add_argument("--warmup", type=non_negative_int, default=5, help="untimed runs before timing (default 5)")
    parser.add_argument("--max-configs", type=positive_int, help="search a seeded random subset of this many choices")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the --max-configs subset (default 0)")
    parser.add_argument(
        "--threshold", type=probability, default=0.001, help="detection score threshold in [0, 1] (default 0.001)"
    )
    parser.add_argument(
        "--sigmas", type=path_option, help="JSON object {category id or name: sigma or [per keypoint]}"
    )
    parser.add_argument(
        "--budget-ms", type=positive_float,
        help="pick the most accurate choice whose median latency is within this many milliseconds",
    )  # fmt: skip
    parser.add_argument(
        "--save-choice", metavar="PATH",  # a str: a trailing separator (a folder) is refused
        help="with --budget-ms: write the picked sub-architecture as a checkpoint of its own (rfkp predict, "
             "serve and export then run it without knobs)",
    )  # fmt: skip
    parser.set_defaults(func=main)
    return parser


def _command(args: argparse.Namespace) -> str:
    parts = ["rfkp", "search"]
    for flag in ("--weights", "--data", "--images", "--out", *(f for f, *_ in _AXIS_OPTIONS), "--device",
                 "--runs", "--warmup", "--max-configs", "--seed", "--threshold", "--sigmas", "--budget-ms",
                 "--save-choice"):  # fmt: skip
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            parts += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return shlex.join(parts)


def select_choices(
    grid: list[ArchChoice], max_configs: int | None, seed: int, full: ArchChoice
) -> list[ArchChoice]:
    """At most ``max_configs`` choices of ``grid`` (seeded, in grid order), ``full`` kept when in ``grid``."""
    if max_configs is None or max_configs >= len(grid):
        return grid
    if max_configs < 1:
        raise ValueError(f"--max-configs must be >= 1, got {max_configs}")
    keep = {grid.index(full)} if full in grid else set()
    others = [i for i in range(len(grid)) if i not in keep]
    picked = np.random.default_rng(seed).choice(len(others), size=max_configs - len(keep), replace=False)
    keep |= {others[int(i)] for i in picked}
    return [grid[i] for i in sorted(keep)]


def format_front(front: list[Any]) -> str:
    """A text table of Pareto-front results, fastest first."""
    head = f"{'res':>5} {'patch':>5} {'win':>4} {'dec':>4} {'queries':>7} {'AP':>7} {'AP50':>7}"
    head += f" {'ms med':>8} {'ms p90':>8}"
    lines = [head]
    for r in front:
        c = r.choice
        lines.append(
            f"{c.resolution:>5} {c.patch_size:>5} {c.num_windows:>4} {c.dec_layers:>4} {c.num_queries:>7} "
            f"{r.ap:>7.4f} {r.ap50:>7.4f} {r.latency_ms_median:>8.2f} {r.latency_ms_p90:>8.2f}"
        )
    return "\n".join(lines)


def _check_out(args: argparse.Namespace) -> None:
    """--out is a folder (or creatable) and none of the files written into it is an input; before the search.

    Raises:
        ValueError: a result file would overwrite an input. NotADirectoryError: --out or a parent is a file.
    """
    out = check_output_folder(args.out, "--out")
    inputs = {"--weights": args.weights, "--data": args.data, "--sigmas": args.sigmas}
    for name in OUT_FILES:
        check_outputs({"--out": out / name}, inputs)
    if args.save_choice is not None:
        if args.budget_ms is None:
            raise ValueError("--save-choice writes the choice --budget-ms picks: give --budget-ms too")
        check_outputs({"--save-choice": args.save_choice}, {**inputs, **{f"--out {n}": out / n for n in OUT_FILES}})
        chosen = Path(args.save_choice).resolve()
        if chosen == out.resolve() or chosen in out.resolve().parents:  # not there yet, so not a folder yet
            raise ValueError(f"--save-choice {args.save_choice} is --out {out} or a folder above it; name a file")


def _run(args: argparse.Namespace) -> int:
    import torch

    from rfkp.api import RFDETRKeypoint
    from rfkp.checkpoint import stored_float_dtype
    from trainer.data.schema import infer_schema
    from trainer.data.validate import load_coco_json
    from trainer.nas.pareto import pareto_front, pick_within_budget, write_csv
    from trainer.nas.plot import pareto_plot
    from trainer.nas.search import device_name, search

    axes = {axis: getattr(args, dest) for _, dest, axis, _ in _AXIS_OPTIONS if getattr(args, dest) is not None}
    _check_out(args)  # --runs and --warmup were checked while parsing
    for what, path in (("annotation", args.data), ("image folder", args.images)):
        if not path.exists():
            raise FileNotFoundError(f"{what} not found: {path}")
    # the sigmas against the file's categories before the model runs (search() validates the whole file)
    schema = infer_schema(load_coco_json(args.data), args.data.name) if args.sigmas is not None else None
    sigmas = load_sigmas(args.sigmas, schema)
    model = RFDETRKeypoint.from_checkpoint(args.weights, device=args.device)
    dtype = stored_float_dtype(args.weights) if args.save_choice is not None else None
    space = SearchSpace.for_config(model.config).override(**axes)
    space.check_model(model.config)
    choices = select_choices(space.grid(), args.max_configs, args.seed, ArchChoice.full(model.config))
    print(f"searching {len(choices)} sub-architectures on {device_name(model.device)}", file=sys.stderr)
    results = search(model, args.data, args.images, choices, latency_runs=args.runs, warmup=args.warmup,
                     threshold=args.threshold, sigmas=sigmas)  # fmt: skip

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    front = pareto_front(results)
    write_csv(results, out / "search.csv")
    write_csv(front, out / "pareto.csv")
    pareto_plot(results, out / "pareto.png")
    meta = {
        "device": device_name(model.device),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": _command(args),
        "space": space.to_dict(),
        "latency": {
            "batch": 1,
            "runs": args.runs,
            "warmup": args.warmup,
            "includes": "forward_raw + postprocess",
        },
        "threshold": args.threshold,
        "results": [r.to_dict() for r in results],
        "pareto": [r.choice.key() for r in front],
    }
    picked = None
    if args.budget_ms is not None:
        picked = pick_within_budget(results, args.budget_ms)
        meta["budget"] = {"ms": args.budget_ms, "picked": picked.choice.key() if picked else None}
    noisy = noisy_latencies(results)
    meta["noisy_latencies"] = [r.choice.key() for r in noisy]
    (out / "search.json").write_text(dumps_strict(meta, indent=2), encoding="utf-8")
    print(format_front(front))
    if noisy:
        worst = max(noisy, key=lambda r: r.latency_ms_p90 / r.latency_ms_median)
        print(f"warning: latency was noisy for {len(noisy)} of {len(results)} choices (p90 over "
              f"{NOISY_P90_RATIO:g}x the median; worst {worst.choice.key()}: median {worst.latency_ms_median:.2f} ms, "
              f"p90 {worst.latency_ms_p90:.2f} ms): the machine is busy, so the front and any budget pick may be "
              "off; measure on an idle machine, or with more --runs", file=sys.stderr)  # fmt: skip
    print(f"wrote search.csv, pareto.csv, pareto.png and search.json to {out}")
    if args.budget_ms is not None:
        return _report_pick(model, results, picked, args, dtype)
    return 0


#: A choice whose p90 latency exceeds its median by this factor was timed on a busy machine.
NOISY_P90_RATIO = 2.0


def noisy_latencies(results: list[Any]) -> list[Any]:
    """The results whose latency spread (p90 / median) says the timing was disturbed."""
    return [r for r in results if r.latency_ms_p90 > NOISY_P90_RATIO * r.latency_ms_median]


def _report_pick(model: Any, results: list[Any], picked: Any, args: argparse.Namespace, dtype: Any = None) -> int:
    """Print (and with --save-choice, write in the float ``dtype`` of --weights) the choice picked within
    --budget-ms; 1 when none fits."""
    from trainer.nas.bake import bake

    if picked is None:
        fastest = min(r.latency_ms_median for r in results)
        if fastest <= args.budget_ms:  # the choices that fit have no AP to rank them by
            why = (f"no choice within {args.budget_ms:g} ms has a defined AP (pycocotools gives -1: no "
                   "ground-truth keypoints to score)")
        else:
            why = f"no choice runs within {args.budget_ms:g} ms here (the fastest took {fastest:.2f} ms median)"
        print(f"rfkp search: error: {why}; see {args.out / 'search.csv'}", file=sys.stderr)
        return 1
    c = picked.choice
    print(f"within {args.budget_ms:g} ms: {c.key()} (AP {picked.ap:.4f}, {picked.latency_ms_median:.2f} ms median)"
          f"; predict(img, resolution={c.resolution}, patch_size={c.patch_size}, num_windows={c.num_windows}, "
          f"dec_layers={c.dec_layers}, num_queries={c.num_queries})")  # fmt: skip
    if args.save_choice is not None:
        bake(model, c).save_checkpoint(Path(args.save_choice), dtype=dtype)
        print(f"wrote {args.save_choice}: the {c.key()} sub-architecture as a checkpoint of its own")
    return 0


def main(args: argparse.Namespace) -> int:
    """Run the search. Returns 0, or 1 when no choice fits --budget-ms; bad input raises (ValueError, OSError),
    which ``rfkp.cli.main`` prints as one line with exit status 1."""
    return _run(args)  # bad input raises ValueError / OSError: rfkp.cli.main prints it (-v: with the traceback)
