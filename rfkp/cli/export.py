"""`rfkp export --format onnx|engine|triton [--outputs detections|raw] --out F`: the network with its
post-processing as one graph (detections, default), or the network alone with its raw outputs (raw: what
`rfkp_model` of the served `rfkp` ensemble produces).

onnx: an ONNX graph (portable; --plugins for the TensorRT plugin nodes). engine: a TensorRT engine (plugin
flavour; needs the `tensorrt` package and the plugin library). triton: a `tensorrt_plan` model folder
(config.pbtxt, the plugin graph as model.onnx, and 1/model.plan when an engine is built or given): with
detections a standalone model, with raw the `rfkp_model` entry of the ensemble (the folder must be named
rfkp_model; `rfkp serve --engine 1/model.plan` renders the same config).
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rfkp.cli.arguments import non_empty_path, positive_int, queue_delay_us
from rfkp.cli.paths import check_output_file, check_output_folder, refuse_overwriting_inputs
from rfkp.export.onnx_export import ONNX_INSTALL_HINT

if TYPE_CHECKING:
    from rfkp.export import ExportedDetector


MIN_OPSET = 17  # the deformable sampling and LayerNorm the graphs use
# A fixed-batch graph is traced with a batch of that size on CPU (time and memory grow with it); larger
# batches belong to a dynamic batch axis, whose trace uses a batch of 2
MAX_FIXED_BATCH = 64
DEFAULT_QUEUE_DELAY_US = 2000


def _fixed_batch(text: str) -> int:
    value = positive_int(text)
    if value > MAX_FIXED_BATCH:
        raise argparse.ArgumentTypeError(
            f"a fixed batch is at most {MAX_FIXED_BATCH} (the graph is traced at that batch), got {value}; "
            "use --dynamic-batch MAX for larger batches"
        )
    return value


def _opset(text: str) -> int:
    import torch.onnx

    value = positive_int(text)
    constants = getattr(torch.onnx, "_constants", None)  # the exporter used (dynamo=False) has its own maximum
    newest = getattr(constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None) or 20
    if not MIN_OPSET <= value <= newest:
        raise argparse.ArgumentTypeError(f"opset must lie in [{MIN_OPSET}, {newest}] (this torch), got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export to ONNX, a TensorRT engine or a Triton model entry", description=__doc__
    )
    p.add_argument(
        "--weights", type=non_empty_path,
        help="rfkp or rfdetr keypoint checkpoint (default: the project's default model)",
    )
    p.add_argument(
        "--format", choices=("onnx", "engine", "triton"), default="onnx", help="what to write (default onnx)"
    )
    p.add_argument("--out", type=non_empty_path, required=True,
                   help="output file (onnx, engine) or model folder (triton)")
    p.add_argument(
        "--outputs", choices=("detections", "raw"), default="detections",
        help="detections: final detections, post-processing in the graph (default); raw: the network's raw "
             "outputs pred_logits, pred_boxes, pred_keypoints, for the served ensemble (rfkp serve)",
    )  # fmt: skip
    p.add_argument("--resolution", type=positive_int, help="input side R (default: the model's)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=_fixed_batch, default=1,
                       help=f"fixed batch size, at most {MAX_FIXED_BATCH} (default 1)")
    batch.add_argument("--dynamic-batch", type=positive_int, metavar="MAX", help="symbolic batch axis, at most MAX")
    p.add_argument("--plugins", action="store_true", help="onnx: rfkp plugin nodes instead of standard ops")
    p.add_argument("--dec-layers", type=positive_int, help="decoder layers to run (NAS knob)")
    p.add_argument("--num-queries", type=positive_int, help="queries to decode (NAS knob)")
    p.add_argument("--patch-size", type=positive_int, help="patch size (NAS knob)")
    p.add_argument("--num-windows", type=positive_int, help="windows per side (NAS knob)")
    p.add_argument("--num-select", type=positive_int, help="detections: output rows N (default 100)")
    p.add_argument("--opset", type=_opset, default=MIN_OPSET, help=f"ONNX opset (default {MIN_OPSET})")
    p.add_argument(
        "--fp32", action="store_true", help="engine: FP32 only (default: FP16 network, FP32 post-processing)"
    )
    p.add_argument(
        "--plugin-lib", type=non_empty_path,
        help="engine: rfkp TensorRT plugin library (default: $RFKP_TRT_PLUGIN_LIB)",
    )  # fmt: skip
    p.add_argument("--engine", type=non_empty_path, help="triton: an already built engine to copy to 1/model.plan")
    p.add_argument(
        "--max-queue-delay-us", type=queue_delay_us,
        help=f"triton with --dynamic-batch: dynamic batching delay (default {DEFAULT_QUEUE_DELAY_US})",
    )  # fmt: skip
    p.set_defaults(func=main)


def _load_model(weights: str | None):  # noqa: ANN202
    from rfkp.api import RFDETRKeypoint

    if weights is not None:
        return RFDETRKeypoint.from_checkpoint(weights, device="cpu")
    model = RFDETRKeypoint.default(device="cpu")
    if model.is_random_init:
        print("warning: no --weights given and no trained default ships: exporting a RANDOM-INITIALISED model")
    return model


def _onnx_path(args: argparse.Namespace, out: Path) -> Path:
    if args.format == "onnx":
        return out
    return out / "model.onnx" if args.format == "triton" else out.with_suffix(".onnx")


def _check_raw_args(args: argparse.Namespace, out: Path) -> None:
    """Arguments that make no sense for the raw outputs, or for the ensemble's rfkp_model entry."""
    if args.outputs != "raw":
        return
    if args.num_select is not None:
        raise ValueError("--num-select selects detection rows: the raw outputs have one row per query")
    if args.format == "triton":
        from rfkp.serving import protocol as P

        if not args.dynamic_batch:
            raise ValueError(
                "--format triton --outputs raw writes rfkp_model of the rfkp ensemble, which batches: "
                "pass --dynamic-batch MAX (at least the ensemble's max batch size)"
            )
        if out.resolve().name != P.NETWORK:
            raise ValueError(
                f"--format triton --outputs raw writes the ensemble's {P.NETWORK} entry: --out must be a folder "
                f"named {P.NETWORK}, got {out}"
            )


def _ensemble_mismatch(detector: ExportedDetector) -> str | None:
    """How a raw export's shapes differ from what the rfkp ensemble feeds and reads (the model's resolution
    and query count: rfkp_preprocess resizes to the one, the post-processing reads the other); None if not."""
    cfg = detector.config
    problems = []
    if detector.resolution != cfg.resolution:
        problems.append(f"resolution {detector.resolution} instead of {cfg.resolution}")
    if detector.num_queries != cfg.num_queries:
        problems.append(f"{detector.num_queries} queries instead of {cfg.num_queries}")
    return "; ".join(problems) or None


def _refuse_unused_options(args: argparse.Namespace) -> None:
    """Options that would be silently ignored for this format or batch are refused."""
    if args.format != "triton" and args.max_queue_delay_us is not None:
        raise ValueError("--max-queue-delay-us sets the dynamic batching of a --format triton entry")
    if args.format == "triton" and args.max_queue_delay_us is not None and not args.dynamic_batch:
        raise ValueError("--max-queue-delay-us sets Triton's dynamic batching: it needs --dynamic-batch MAX")
    build_options = [flag for flag, value in (("--fp32", args.fp32), ("--plugin-lib", args.plugin_lib)) if value]
    if build_options and args.format == "onnx":
        raise ValueError(f"{' and '.join(build_options)} only apply when an engine is built (--format engine "
                         "or triton)")
    if build_options and args.format == "triton" and args.engine:
        raise ValueError(f"{' and '.join(build_options)} only apply when an engine is built, not with --engine "
                         "(an engine already built)")


def _check_paths(args: argparse.Namespace) -> None:
    """Nothing the export writes may replace an input or leave a half-made or stale Triton entry."""
    out = Path(args.out)
    onnx_path = _onnx_path(args, out)
    if args.format == "engine" and onnx_path == out:
        raise ValueError(f"--out {out}: an engine is not an .onnx file (its ONNX graph is written beside it)")
    outputs = {"--out": out}
    if onnx_path != out:
        outputs["the ONNX graph written beside it"] = onnx_path
    refuse_overwriting_inputs(outputs, {"--weights": args.weights, "--engine": args.engine})
    if args.engine and not Path(args.engine).is_file():
        raise FileNotFoundError(f"--engine {args.engine} not found")
    if args.engine and Path(args.engine).stat().st_size == 0:
        raise ValueError(f"--engine {args.engine} is empty: not a TensorRT engine")
    if args.format == "triton":
        check_output_folder(out, "--out")
        if (out / "1").exists() and not (out / "1").is_dir():
            raise NotADirectoryError(f"--out {out}: {out / '1'} is a file, where the engine's version folder goes")
        old = [p for p in (out / "config.pbtxt", out / "1" / "model.plan") if p.exists()]
        if old:
            raise FileExistsError(
                f"--out {out} already holds a model entry ({', '.join(str(p) for p in old)}): a new config beside "
                "an old engine would not match it; choose a new folder or remove the old entry"
            )
    else:
        check_output_file(args.out, "--out")
        if out.exists() and not out.is_file():  # /dev/null, a pipe: the graph is read back after it is written
            raise ValueError(f"--out {out} is not a regular file; the export writes the graph and reads it back")
    if onnx_path != out:
        check_output_file(onnx_path, "--out")


def _engine_command(args: argparse.Namespace, plan: Path) -> str:
    """The ``rfkp export --format engine`` command that builds the engine a ``--format triton`` entry expects:
    the same weights, outputs, batch and knobs, written to ``plan``."""
    parts = ["rfkp", "export"]
    if args.weights:
        parts += ["--weights", str(args.weights)]
    parts += ["--format", "engine", "--outputs", args.outputs]
    parts += ["--dynamic-batch", str(args.dynamic_batch)] if args.dynamic_batch else ["--batch", str(args.batch)]
    for flag in ("--resolution", "--dec-layers", "--num-queries", "--patch-size", "--num-windows", "--num-select"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            parts += [flag, str(value)]
    if args.opset != MIN_OPSET:
        parts += ["--opset", str(args.opset)]
    if args.fp32:
        parts.append("--fp32")
    if args.plugin_lib:  # else the build machine's $RFKP_TRT_PLUGIN_LIB names it
        parts += ["--plugin-lib", args.plugin_lib]
    return shlex.join([*parts, "--out", str(plan)])


def _plugin_library_error(args: argparse.Namespace) -> str | None:
    """For an engine build: None when the plugin library is named, present and registers the rfkp creators,
    else why not (checked before the export, which would otherwise run first and leave its graph behind)."""
    from rfkp.export import engine as trt_engine

    library = trt_engine.plugin_library(args.plugin_lib)
    if library is None:
        return f"no rfkp TensorRT plugin library given.\n{trt_engine.INSTALL_HINT}"
    source = "--plugin-lib" if args.plugin_lib else f"${trt_engine.PLUGIN_LIB_ENV}"
    if not library.is_file():
        raise FileNotFoundError(f"{source}: plugin library not found: {library}")
    try:
        trt_engine.check_plugin_library(library)
    except trt_engine.EngineBuildError as exc:
        return f"{source}: {exc}"
    return None


def _build_engine(args: argparse.Namespace, onnx_path: Path, resolution: int) -> Path:
    """The TensorRT engine of the exported graph: ``--out`` (engine) or the entry's ``1/model.plan``."""
    from rfkp.export import engine as trt_engine

    out = Path(args.out)
    profile = (
        trt_engine.BatchProfile.dynamic(args.dynamic_batch) if args.dynamic_batch
        else trt_engine.BatchProfile.fixed(args.batch)
    )  # fmt: skip
    target = out if args.format == "engine" else out / "1" / "model.plan"
    return trt_engine.build_engine(
        onnx_path, target, resolution=resolution, profile=profile, fp16=not args.fp32, plugin_lib=args.plugin_lib
    )


def _write_triton_entry(args: argparse.Namespace, detector: ExportedDetector, built: Path | None) -> None:
    from rfkp.export.triton_entry import TritonEntryOptions, write_model_entry
    from rfkp.serving.repository import metadata_parameters

    out = Path(args.out)
    options = TritonEntryOptions(
        batch=args.batch, max_batch=args.dynamic_batch,
        max_queue_delay_us=DEFAULT_QUEUE_DELAY_US if args.max_queue_delay_us is None else args.max_queue_delay_us,
        metadata=metadata_parameters(detector.config),
    )  # fmt: skip
    config = write_model_entry(
        out, config=detector.config, resolution=detector.resolution, num_select=detector.num_select,
        options=options, engine=args.engine, outputs=args.outputs, num_queries=detector.num_queries,
    )  # fmt: skip
    print(f"wrote {config}")
    if built is None and not args.engine:
        plan = out / "1" / "model.plan"
        print(f"no engine yet ('tensorrt' is not installed here): on the serving GPU, build it into the entry "
              f"with\n  {_engine_command(args, plan)}")  # fmt: skip
        if not args.plugin_lib:
            print("(add --plugin-lib PATH there, or set $RFKP_TRT_PLUGIN_LIB, to the plugin library built there)")
        if args.plugin_lib:
            print(f"(--plugin-lib {args.plugin_lib} was not used: it is needed where the engine is built)")


def main(args: argparse.Namespace) -> int:
    from rfkp.export import engine as trt_engine

    _check_raw_args(args, Path(args.out))
    _refuse_unused_options(args)
    _check_paths(args)
    if importlib.util.find_spec("onnx") is None:
        print(f"rfkp export: error: the 'onnx' package is not installed: {ONNX_INSTALL_HINT}", file=sys.stderr)
        return 1
    if args.format == "engine" and not trt_engine.tensorrt_available():
        message = f"the 'tensorrt' Python package is not installed.\n{trt_engine.INSTALL_HINT}"
        print(f"rfkp export: error: {message}", file=sys.stderr)
        return 1
    if args.engine and args.format != "triton":
        raise ValueError("--engine is for --format triton")
    build = args.format == "engine" or (
        args.format == "triton" and not args.engine and trt_engine.tensorrt_available()
    )
    problem = _plugin_library_error(args) if build else None
    if problem:
        print(f"rfkp export: error: {problem}", file=sys.stderr)
        return 1

    from rfkp.export import ExportedDetector, export_onnx

    model = _load_model(args.weights)
    plugins = args.plugins or args.format != "onnx"  # engines and Triton entries use the plugin flavour
    detector = ExportedDetector(
        model, resolution=args.resolution, dec_layers=args.dec_layers, num_queries=args.num_queries,
        num_select=100 if args.num_select is None else args.num_select, patch_size=args.patch_size,
        num_windows=args.num_windows, plugins=plugins, outputs=args.outputs,
    )  # fmt: skip
    mismatch = _ensemble_mismatch(detector) if args.outputs == "raw" else None
    if mismatch and args.format == "triton":
        raise ValueError(
            f"--format triton --outputs raw writes rfkp_model of the rfkp ensemble, which serves the model at its "
            f"own shapes: {mismatch}. Drop --resolution/--num-queries, or export a standalone entry "
            "(--outputs detections)"
        )
    onnx_path = export_onnx(
        detector, _onnx_path(args, Path(args.out)), batch=args.batch, dynamic_batch=args.dynamic_batch,
        opset=args.opset,
    )  # fmt: skip
    flavour = "plugins" if plugins else "portable"
    rows = f"{detector.num_queries} queries, raw outputs" if args.outputs == "raw" else f"{detector.num_select} rows"
    if args.num_select and detector.num_select < args.num_select:
        rows += f" (--num-select {args.num_select} capped at queries x classes)"
    print(f"wrote {onnx_path} ({flavour}, {detector.resolution} px, {rows})")
    if args.format == "onnx":
        return 0

    built = None
    if build:
        try:
            built = _build_engine(args, onnx_path, detector.resolution)
        except trt_engine.EngineBuildError as exc:
            print(f"rfkp export: error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {built}")
    if args.format == "engine":
        if mismatch:
            print(f"not servable by the rfkp ensemble ({mismatch}): it runs the model at its own shapes")
        elif args.outputs == "raw":
            print(f"serve it in the rfkp ensemble: rfkp serve --engine {built} --server system (a tritonserver "
                  "with the TensorRT backend and the rfkp plugin library loaded)")  # fmt: skip
        return 0
    _write_triton_entry(args, detector, built)
    return 0
