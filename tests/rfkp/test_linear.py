"""rfkp.nn.linear: the oneDNN inference path equals F.linear (+ activation) up to rounding, and is taken only
where it may be (fp32 CPU inference outside graph capture)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rfkp.nn import linear as linear_mod
from rfkp.nn.linear import Linear, linear, onednn_linear_available, set_onednn_linear

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build has no oneDNN linear")


@pytest.fixture(autouse=True)
def _restore_switch():
    saved = linear_mod._enabled
    yield
    set_onednn_linear(saved)


def _case(seed: int = 0, shape=(3, 7, 48), out_features: int = 40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(out_features, shape[-1], generator=g) / shape[-1] ** 0.5
    b = torch.randn(out_features, generator=g)
    return x, w, b


def _count_onednn_calls(monkeypatch) -> list[int]:
    calls = [0]
    real = torch.ops.mkldnn._linear_pointwise

    class Counting:
        def __call__(self, *args):
            calls[0] += 1
            return real(*args)

    monkeypatch.setattr(linear_mod.torch.ops.mkldnn, "_linear_pointwise", Counting())
    return calls


@needs_onednn
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_path_matches_reference(activation, bias) -> None:
    x, w, b = _case()
    b = b if bias else None
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())
    expected = {None: lambda t: t, "relu": F.relu, "gelu": F.gelu}[activation](expected)
    set_onednn_linear(True)
    with torch.inference_mode():
        fast = linear(x, w, b, activation)
    set_onednn_linear(False)
    with torch.inference_mode():
        plain = linear(x, w, b, activation)
    assert fast.dtype == plain.dtype == torch.float32 and fast.shape == plain.shape == (3, 7, 40)
    # fp32 rounding of a 48-term dot product, both paths against fp64
    torch.testing.assert_close(fast.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain.double(), expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_path_choice(monkeypatch) -> None:
    calls = _count_onednn_calls(monkeypatch)
    x, w, b = _case()
    set_onednn_linear(True)
    with torch.no_grad():
        linear(x, w, b)
    assert calls[0] == 1, "fp32 CPU inference takes oneDNN"
    linear(x, w, b)  # grad mode on: training keeps autograd's F.linear
    with torch.no_grad():
        linear(x.double(), w.double(), b.double())  # other dtypes
        set_onednn_linear(False)
        linear(x, w, b)  # switched off
    assert calls[0] == 1


@needs_onednn
def test_tracing_sees_the_standard_op(monkeypatch) -> None:
    calls = _count_onednn_calls(monkeypatch)
    set_onednn_linear(True)
    layer = Linear(48, 40).eval()
    with torch.no_grad():
        traced = torch.jit.trace(layer, (torch.randn(2, 48),), check_trace=False)
    assert calls[0] == 0
    assert "mkldnn" not in str(traced.graph)
    assert "aten::linear" in str(traced.graph)


def test_training_gradients_unchanged() -> None:
    x, w, b = _case()
    layer = Linear(48, 40)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    out = layer(x, "gelu")
    out.sum().backward()
    ref_w = w.clone().requires_grad_()
    F.gelu(F.linear(x, ref_w, b)).sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref_w.grad)


def test_unknown_activation_is_refused() -> None:
    x, w, b = _case()
    with pytest.raises(ValueError, match="activation must be one of"):
        linear(x, w, b, "tanh")


def test_state_dict_keys_are_those_of_nn_linear() -> None:
    assert Linear(4, 3).state_dict().keys() == torch.nn.Linear(4, 3).state_dict().keys()


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape"), [((2, 5), (4, 3), (4,)), ((2, 3), (4, 3), (5,)), ((2, 3), (4, 3, 1), (4,))]
)
def test_shape_mismatch_gets_torch_s_message(x_shape, w_shape, b_shape) -> None:
    set_onednn_linear(True)
    with torch.no_grad(), pytest.raises(RuntimeError) as err:
        linear(torch.randn(*x_shape), torch.randn(*w_shape), torch.randn(*b_shape))
    assert "primitive descriptor" not in str(err.value)
    assert any(str(n) in str(err.value) for n in (*x_shape, *w_shape, *b_shape))


def test_a_strided_bias_gives_the_f_linear_result() -> None:
    from rfkp.nn.linear import linear

    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(12, generator=g)[::2]
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), torch.nn.functional.linear(x, w, b))
