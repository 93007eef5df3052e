"""Which peer architecture options rfkp loads, and how closely it matches the peer on each.

For every option set below, the peer's fixture tool (``../shared/tools/make_peer_fixture.py``, run with the
peer's own python) builds a random-weight peer model with those options and saves its checkpoint and raw
outputs; rfkp then loads the checkpoint and compares ``forward_raw`` (max abs difference per tensor), or
records the error it refuses the checkpoint with. The tool writes ``args`` without the attention heads, points
rescoring strength and the flags that leave the tensors alone (dual_projector_kp_only, bbox_reparam), so those
are added to the saved args as the released checkpoint carries them.
Usage:
    python benchmarks/peer_options.py --peer-python PEER_PYTHON [--out benchmarks/results/peer_options.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peer_env import peer_python_problem
from result_file import result_path, write_result

from rfkp import RFDETRKeypoint

TOOL = Path(__file__).resolve().parents[1] / ".." / "shared" / "tools" / "make_peer_fixture.py"
RAW = ("pred_logits", "pred_boxes", "pred_keypoints")
# the peer's keyword arguments; what it carries in args beyond the tool's own set (heads, points, alpha, flags)
OPTION_SETS = [
    {},
    {"num_classes": 2, "num_keypoints_per_class": [7, 4]},
    {"num_classes": 3, "num_keypoints_per_class": [5], "num_queries": 60, "dec_layers": 3, "resolution": 480},
    {"patch_size": 16, "resolution": 576},
    {"num_windows": 4},
    {"positional_encoding_size": 32},
    {"hidden_dim": 128},
    {"dec_n_points": 4},
    {"ca_nheads": 8, "sa_nheads": 4},
    {"group_detr": 5},
    {"encoder": "dinov2_windowed_base"},
    {"out_feature_indexes": [2, 5, 8, 11]},
    {"projector_scale": ["P4"]},
    {"postprocess_trace_alpha": 0.3},
    {"num_decoder_registers": 2},
    {"grouppose_keypoint_dim_downscale": 2},
    {"grouppose_keypoint_dim_downscale": 4},
    {"inter_instance_kp_attn": True},
    {"grouppose_keypoint_dim_downscale": 2, "inter_instance_kp_attn": True, "num_keypoints_per_class": [7, 4],
     "num_classes": 2},
    {"layer_norm": False},
    {"keypoint_cross_attn": False},
    {"dual_projector_kp_only": False},
    {"dual_projector": False},
    {"bbox_reparam": False},
    {"num_decoder_registers": 2, "layer_norm": False, "grouppose_keypoint_dim_downscale": 2,
     "inter_instance_kp_attn": True, "dec_layers": 3, "num_queries": 50},
]
ARGS_KEYS = {"ca_nheads": 16, "sa_nheads": 8, "dec_n_points": 2, "postprocess_trace_alpha": 0.2,
             "dual_projector_kp_only": True, "bbox_reparam": True}


def one(peer_python: str, options: dict, folder: Path) -> dict:
    env = {**os.environ, "PEER_KW": json.dumps(options)}
    done = subprocess.run([peer_python, str(TOOL), str(folder), "3"], env=env, capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()
        return {"options": options, "peer": "refused", "error": lines[-1][:300]}
    params = int(done.stdout.strip().split()[-1])  # the tool ends with "params N"
    path = folder / "checkpoint.pth"
    data = torch.load(path, map_location="cpu", weights_only=True)
    data["args"].update({k: options.get(k, default) for k, default in ARGS_KEYS.items()})
    torch.save(data, path)
    try:
        model = RFDETRKeypoint.from_checkpoint(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - the message is the result
        message = str(exc).replace(str(path), "checkpoint.pth")
        return {"options": options, "peer_parameters": params, "rfkp": "refused",
                "error": f"{type(exc).__name__}: {message}"[:400]}  # fmt: skip
    ref = torch.load(folder / "raw_outputs.pt", weights_only=True)
    out = model.forward_raw(ref["input"])
    diffs = {k: float((out[k] - ref[k]).abs().max()) for k in RAW}
    return {"options": options, "peer_parameters": params, "rfkp": "loaded", "max_abs_diff": diffs,
            "rescore_alpha": model.config.rescore_alpha, "rfkp_parameters": sum(p.numel() for p in model.network.parameters())}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer-python", required=True, help="python of a venv with rfdetr (../shared/tools/peer_env.sh)")
    ap.add_argument("--out", type=result_path)
    args = ap.parse_args()
    problem = peer_python_problem(args.peer_python)
    if problem:  # every option set would otherwise be recorded as refused by the peer
        print(f"peer_options.py: --peer-python: {problem}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, options in enumerate(OPTION_SETS):
            row = one(args.peer_python, options, Path(tmp) / str(i))
            rows.append(row)
            shown = row.get("max_abs_diff") or row.get("error")
            print(f"{json.dumps(options):<100} {row.get('peer_parameters')} {row.get('rfkp', 'peer ' + row.get('peer', ''))}: "
                  f"{shown}")
    if args.out:
        version = subprocess.run([args.peer_python, "-c", "import importlib.metadata as m; print(m.version('rfdetr'))"],
                                 capture_output=True, text=True).stdout.strip() or "unknown"  # fmt: skip
        write_result(args.out, f"peer (rfdetr {version}) architecture options: rfkp loads them and matches "
                     "forward_raw, or refuses with a message", {"rows": rows}, peer_version=version)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
