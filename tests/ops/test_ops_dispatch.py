"""The public ops on CPU: reference dispatch, torch.library registration, autograd, checks, backend choice."""

from __future__ import annotations

import logging

import pytest
import torch

import rfkp.ops as ops
from rfkp.ops import backend, library
from rfkp.ops.sample_inputs import msda_inputs, rescore_inputs

LEVELS = [(3, 4), (2, 2)]
PLAIN = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
FUSED = ("value", "spatial_shapes", "level_start_index", "reference", "sampling_offsets", "attention_logits")


@pytest.fixture(autouse=True)
def _automatic_backend(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    backend.set_ops_backend(None)
    yield
    backend.set_ops_backend(None)


def _args(inputs: dict[str, torch.Tensor], names: tuple[str, ...], grad: bool = False) -> tuple:
    return tuple(inputs[n].clone().requires_grad_(grad and inputs[n].is_floating_point()) for n in names)


def test_cpu_dispatch_is_bit_identical_to_the_reference():
    args = _args(msda_inputs(2, 5, 3, 8, LEVELS, 3), PLAIN)
    expected = ops.ms_deform_attn_reference(*args)
    assert torch.equal(ops.multi_scale_deformable_attention(*args), expected)
    assert torch.equal(library.ms_deform_attn_op(*args), expected)
    assert ops.ops_backend("cpu") == "reference"


@pytest.mark.parametrize("reference_dim,reference_levels", [(2, 1), (2, 2), (4, 1), (4, 2)])
def test_fused_reference_matches_explicit_locations(reference_dim, reference_levels):
    x = msda_inputs(1, 4, 2, 4, LEVELS, 2, dtype=torch.float64, reference_dim=reference_dim,
                    reference_levels=reference_levels)
    ref, off, logits = x["reference"], x["sampling_offsets"], x["attention_logits"]
    # Locations written out per level and point, independently of the broadcasting in the reference.
    loc = torch.empty_like(off)
    for lvl, (h, w) in enumerate(LEVELS):
        r = ref[:, :, 0 if reference_levels == 1 else lvl]
        for p in range(off.shape[4]):
            o = off[:, :, :, lvl, p]
            if reference_dim == 2:
                loc[:, :, :, lvl, p, 0] = r[:, :, None, 0] + o[..., 0] / w
                loc[:, :, :, lvl, p, 1] = r[:, :, None, 1] + o[..., 1] / h
            else:
                loc[:, :, :, lvl, p] = r[:, :, None, :2] + o / off.shape[4] * r[:, :, None, 2:] * 0.5
    weights = torch.softmax(logits.flatten(-2), -1).view_as(logits)
    expected = ops.ms_deform_attn_reference(x["value"], x["spatial_shapes"], x["level_start_index"], loc, weights)
    args = _args(x, FUSED)
    torch.testing.assert_close(ops.multi_scale_deformable_attention_fused(*args), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(library.ms_deform_attn_fused_op(*args), expected, rtol=1e-12, atol=1e-12)


def test_plain_op_opcheck_and_gradcheck():
    args = _args(msda_inputs(1, 3, 2, 3, LEVELS, 2, dtype=torch.float64), PLAIN, grad=True)
    torch.library.opcheck(library.ms_deform_attn_op, args)
    assert torch.autograd.gradcheck(library.ms_deform_attn_op, args)


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_fused_op_opcheck_and_gradcheck(reference_dim):
    args = _args(msda_inputs(1, 3, 2, 3, LEVELS[:1], 2, dtype=torch.float64, reference_dim=reference_dim),
                 FUSED, grad=True)
    torch.library.opcheck(library.ms_deform_attn_fused_op, args)
    assert torch.autograd.gradcheck(library.ms_deform_attn_fused_op, args)


def test_export_and_compile_see_one_op():
    args = _args(msda_inputs(1, 3, 2, 4, LEVELS, 2), PLAIN)

    class Attend(torch.nn.Module):
        def forward(self, *a):
            return torch.ops.rfkp.ms_deform_attn(*a)

    exported = torch.export.export(Attend(), args)
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.rfkp.ms_deform_attn.default]
    compiled = torch.compile(library.ms_deform_attn_op, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), ops.ms_deform_attn_reference(*args))


def test_empty_and_non_contiguous_inputs():
    x = msda_inputs(2, 4, 3, 5, LEVELS, 2)
    loc = x["sampling_locations"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not loc.is_contiguous()
    args = (x["value"], x["spatial_shapes"], x["level_start_index"], loc, x["attention_weights"])
    torch.testing.assert_close(library.ms_deform_attn_op(*args), ops.ms_deform_attn_reference(*args))
    empty = msda_inputs(2, 0, 3, 5, LEVELS, 2)
    assert library.ms_deform_attn_op(*_args(empty, PLAIN)).shape == (2, 0, 15)


@pytest.mark.parametrize("mutate,error,match", [
    (lambda a: a.update(value=a["value"][0]), ValueError, r"value must be \(B, S, H, D\)"),
    (lambda a: a.update(attention_weights=a["attention_weights"][..., :1]), ValueError, "attention_weights must be"),
    (lambda a: a.update(sampling_locations=a["sampling_locations"].double()), TypeError, "sampling_locations has dtype"),
    (lambda a: a.update(spatial_shapes=a["spatial_shapes"].float()), TypeError, "must be integer tensors"),
    (lambda a: a.update(level_start_index=a["level_start_index"][:1]), ValueError, r"level_start_index must be \(2,\)"),
])
@pytest.mark.parametrize("entry", [library.ms_deform_attn_op, ops.multi_scale_deformable_attention])
def test_bad_inputs_get_precise_errors(mutate, error, match, entry):
    x = msda_inputs(1, 2, 2, 4, LEVELS, 2)
    mutate(x)
    with pytest.raises(error, match=match):
        entry(*(x[n] for n in PLAIN))


@pytest.mark.parametrize("entry", [library.ms_deform_attn_fused_op, ops.multi_scale_deformable_attention_fused])
def test_fused_bad_reference_shape(entry):
    x = msda_inputs(1, 2, 2, 4, LEVELS, 2, reference_dim=4)
    for bad in (x["reference"][..., :3], x["reference"][:, :1]):  # the second one used to broadcast on CPU
        with pytest.raises(ValueError, match=r"reference must be \(1, 2, 1 or 2, 2 or 4\)"):
            entry(*(bad if n == "reference" else x[n] for n in FUSED))
    x["attention_logits"] = x["attention_logits"].double()
    with pytest.raises(TypeError, match="attention_logits has dtype torch.float64 but value has torch.float32"):
        entry(*(x[n] for n in FUSED))


def test_public_rescore_checks_its_inputs_on_cpu():
    x = rescore_inputs(3, 2)
    names = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")
    x["score"] = x["score"][:, None]  # (N, 1) used to broadcast to an (N, N) result
    with pytest.raises(ValueError, match=r"score must be \(3,\) for cholesky \(3, 2, 3\), got \(3, 1\)"):
        ops.gaussian_rescore(*(x[n] for n in names))


def test_public_functions_follow_the_ops_autocast_rule():
    names = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")
    x = rescore_inputs(3, 2)
    mixed = {n: (t.bfloat16() if n == "cholesky" else t) for n, t in x.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ops.gaussian_rescore(*(mixed[n] for n in names))
        want = library.gaussian_rescore_op(*(mixed[n] for n in names), 0.2)
    assert [t.dtype for t in got] == [t.dtype for t in want] == [torch.float32] * 3
    wide = msda_inputs(1, 3, 2, 4, LEVELS, 2, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float64 is left alone by autocast
        assert ops.multi_scale_deformable_attention(*(wide[n] for n in PLAIN)).dtype == torch.float64


@pytest.mark.parametrize("entry", [library.ms_deform_attn_op, ops.multi_scale_deformable_attention])
def test_level_tensors_on_the_meta_device_are_refused(entry):
    x = msda_inputs(1, 2, 2, 4, LEVELS, 2)
    x["spatial_shapes"] = x["spatial_shapes"].to("meta")  # used to return uninitialised memory
    with pytest.raises(ValueError, match="spatial_shapes is on the meta device but value is on cpu"):
        entry(*(x[n] for n in PLAIN))


def test_cuda_requested_for_cpu_tensors_raises(monkeypatch):
    x = msda_inputs(1, 2, 2, 4, LEVELS, 2)
    monkeypatch.setenv(backend.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was requested but cannot run on CPU: the CUDA library runs on"):
        ops.multi_scale_deformable_attention(*(x[n] for n in PLAIN))


def test_backend_override_function_env_and_logging(monkeypatch, caplog):
    with pytest.raises(ValueError, match="unknown ops backend 'fast'"):
        ops.set_ops_backend("fast")
    monkeypatch.setenv(backend.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="RFKP_OPS_BACKEND='bogus' is not one of"):
        ops.ops_backend("cpu")
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="'triton' was requested but cannot run on CPU"):
        ops.ops_backend("cpu")
    ops.set_ops_backend("reference")  # the function wins over the environment
    with caplog.at_level(logging.INFO, logger="rfkp.ops"):
        assert ops.ops_backend("cpu") == "reference"
        assert ops.ops_backend("cpu") == "reference"
    assert sum("backend for cpu: reference" in r.getMessage() for r in caplog.records) == 1


def test_autocast_runs_the_op_in_float32():
    x = msda_inputs(1, 3, 2, 4, LEVELS, 2)
    value = x["value"].bfloat16()  # mixed precision: half value, float32 locations and weights
    rest = (x["spatial_shapes"], x["level_start_index"], x["sampling_locations"], x["attention_weights"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = library.ms_deform_attn_op(value, *rest)
    assert out.dtype == torch.float32
    assert torch.equal(out, ops.ms_deform_attn_reference(value.float(), *rest))
    with pytest.raises(TypeError, match="cast the inputs to one dtype"):
        library.ms_deform_attn_op(value, *rest)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the public function: the same rule
        assert torch.equal(ops.multi_scale_deformable_attention(value, *rest), out)
    with pytest.raises(TypeError, match="cast the inputs to one dtype"):
        ops.multi_scale_deformable_attention(value, *rest)
