"""The Triton kernels compile to PTX and cubin for sm_80 and sm_90 without a GPU (triton.compile).

The interpreter is lenient about types; the real compiler is not, so this catches what the interpreter tests
cannot. It runs in a child process because the interpreter tests import the kernel modules with
TRITON_INTERPRET=1, which makes them uncompilable in this process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

# Not imported here: importing triton in this process before the interpreter tests would break them.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

_SCRIPT = r"""
import json, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rfkp.ops import triton_ms_deform_attn as msda, triton_rescore as rescore

def compile_one(fn, pointers, ints, consts, arch):
    sig = {n: pointers.get(n, "i32" if n in ints else "constexpr") for n in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                            target=GPUTarget("cuda", arch, 32))
    return "ptx" in kernel.asm and "cubin" in kernel.asm and f".target sm_{arch}" in kernel.asm["ptx"]

results = {}
for name, arch, t, acc, backward, fused, ref_dim, blocks in json.loads(sys.argv[1]):
    pointers = {n: f"*{t}" for n in msda._msda_kernel.arg_names if n.endswith("_ptr")}
    pointers.update(shapes_ptr="*i64", starts_ptr="*i64", grad_value_ptr=f"*{acc}", grad_ref_ptr=f"*{acc}")
    consts = dict(BACKWARD=backward, FUSED=fused, REF_DIM=ref_dim, ACC=getattr(tl, {"fp32": "float32",
                  "fp64": "float64"}[acc]), BLOCK_H=blocks[0], BLOCK_J=blocks[1], BLOCK_D=blocks[2])
    results[name] = compile_one(msda._msda_kernel, pointers, {"S", "Q", "H", "D", "L", "P", "REF_LEVELS"},
                                consts, arch)
pointers = {n: "*fp32" for n in rescore._rescore_kernel.arg_names if n.endswith("_ptr")}
pointers["active_ptr"] = "*u8"
results["rescore_sm80"] = compile_one(rescore._rescore_kernel, pointers, {"N", "K"},
                                      dict(ACC=tl.float32, BLOCK_N=64, BLOCK_K=32), 80)
print(json.dumps(results))
"""

# name, arch, dtype, accumulation, backward, fused, reference dim, (BLOCK_H, BLOCK_J, BLOCK_D)
VARIANTS = [
    ("forward_plain_fp32_sm90", 90, "fp32", "fp32", False, False, 2, (16, 2, 16)),
    ("backward_fused_boxes_fp16_sm90", 90, "fp16", "fp32", True, True, 4, (8, 2, 16)),
    ("backward_plain_bf16_sm80", 80, "bf16", "fp32", True, False, 2, (4, 16, 32)),
    ("forward_fused_points_fp64_sm80", 80, "fp64", "fp64", False, True, 2, (2, 4, 128)),
    ("backward_fused_points_fp64_sm90", 90, "fp64", "fp64", True, True, 2, (2, 4, 8)),
]


def test_triton_kernels_compile_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(VARIANTS)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == {name: True for name in [v[0] for v in VARIANTS] + ["rescore_sm80"]}
