"""Multi-scale deformable attention in the Triton language: forward and backward, plain and fused.

Reference and memory traffic: `rfkp.ops.ms_deform_attn.ms_deform_attn_reference`. These kernels read value
only at the four corners of every sample and write the output once (forward); the backward also scatters the
value gradient (atomics) and writes one gradient per location and weight.

Layout: one program per (b, q) and block of BLOCK_H heads. It holds a (BLOCK_H, BLOCK_J, BLOCK_D) tile:
heads x samples (j = l * P + p, all levels and points at once) x channels, so the softmax over (L, P) and
the sums over channels are in-register reductions. Sums are carried in float32 (float64 for float64).

Import triton only through this module (it is optional); set TRITON_INTERPRET=1 before importing it to run
the kernels on CPU tensors.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _level_and_location(coords_ptr, weights_ptr, ref_ptr, shapes_ptr, starts_ptr, bq, offs_h, offs_j,
                        mask_h, mask_j, S, H, L, P, REF_LEVELS,
                        FUSED: tl.constexpr, REF_DIM: tl.constexpr, ACC: tl.constexpr):
    """Per-sample level geometry, pixel coordinates and weights of a (BLOCK_H, BLOCK_J) tile."""
    lvl = offs_j // P
    hl = tl.load(shapes_ptr + 2 * lvl, mask=mask_j, other=1)
    wl = tl.load(shapes_ptr + 2 * lvl + 1, mask=mask_j, other=1)
    start = tl.load(starts_ptr + lvl, mask=mask_j, other=0)
    # A level that does not fit in S reads nothing (zero contribution) instead of out of bounds.
    level_ok = mask_j & (hl > 0) & (wl > 0) & (start >= 0) & (start + hl * wl <= S)
    hf = hl.to(ACC)
    wf = wl.to(ACC)
    sample = (bq * H + offs_h)[:, None] * (L * P) + offs_j[None, :]  # (BH, BJ) flat sample index
    mask_hj = mask_h[:, None] & mask_j[None, :]
    cx = tl.load(coords_ptr + 2 * sample, mask=mask_hj, other=0.0).to(ACC)
    cy = tl.load(coords_ptr + 2 * sample + 1, mask=mask_hj, other=0.0).to(ACC)
    if FUSED:
        logits = tl.load(weights_ptr + sample, mask=mask_hj, other=float("-inf")).to(ACC)
        row_max = tl.max(logits, axis=1)
        e = tl.where(mask_hj, tl.exp(logits - row_max[:, None]), 0.0)
        row_sum = tl.sum(e, axis=1)
        w = e / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
        ref_level = tl.where(REF_LEVELS == 1, 0, lvl)
        ref = ref_ptr + (bq * REF_LEVELS + ref_level) * REF_DIM  # (BJ,) pointers
        rx = tl.load(ref, mask=mask_j, other=0.0).to(ACC)[None, :]
        ry = tl.load(ref + 1, mask=mask_j, other=0.0).to(ACC)[None, :]
        if REF_DIM == 2:
            x = rx + cx / wf[None, :]
            y = ry + cy / hf[None, :]
            dx = 1.0 / wf[None, :]
            dy = 1.0 / hf[None, :]
        else:
            rw = tl.load(ref + 2, mask=mask_j, other=0.0).to(ACC)[None, :]
            rh = tl.load(ref + 3, mask=mask_j, other=0.0).to(ACC)[None, :]
            x = rx + cx / P * rw * 0.5
            y = ry + cy / P * rh * 0.5
            dx = rw * 0.5 / P
            dy = rh * 0.5 / P
    else:
        w = tl.load(weights_ptr + sample, mask=mask_hj, other=0.0).to(ACC)
        x = cx
        y = cy
        dx = wf[None, :] * 0.0 + 1.0  # d location / d coordinate, (1, BJ)
        dy = dx
    # Pixel coordinates, align_corners=False: the centre of pixel i is at (i + 0.5) / size.
    h_im = y * hf[None, :] - 0.5
    w_im = x * wf[None, :] - 0.5
    inside = mask_hj & level_ok[None, :] & (h_im > -1.0) & (w_im > -1.0) & (h_im < hf[None, :]) \
        & (w_im < wf[None, :])
    h_im = tl.where(inside, h_im, 0.0)
    w_im = tl.where(inside, w_im, 0.0)
    return hl, wl, start, sample, mask_hj, inside, w, h_im, w_im, dx, dy, cx, cy


@triton.jit
def _corner(value_ptr, row0, y, x, hl, wl, inside, offs_h, offs_d, mask_d, H, D, ACC: tl.constexpr):
    """Offsets (BH, BJ, BD), mask and values of one bilinear corner (zero outside the map)."""
    valid = inside & (y >= 0) & (y < hl[None, :]) & (x >= 0) & (x < wl[None, :])
    pos = row0[None, :] + y * wl[None, :] + x  # position in S (plus the batch offset)
    offs = (pos * H + offs_h[:, None]) * D
    offs = offs[:, :, None] + offs_d[None, None, :]
    mask = valid[:, :, None] & mask_d[None, None, :]
    return offs, mask, tl.load(value_ptr + offs, mask=mask, other=0.0).to(ACC)


@triton.jit
def _msda_kernel(value_ptr, shapes_ptr, starts_ptr, coords_ptr, weights_ptr, ref_ptr, grad_out_ptr, out_ptr,
                 grad_value_ptr, grad_coords_ptr, grad_weights_ptr, grad_ref_ptr,
                 S, Q, H, D, L, P, REF_LEVELS,
                 BACKWARD: tl.constexpr, FUSED: tl.constexpr, REF_DIM: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    bq = tl.program_id(0).to(tl.int64)  # b * Q + q
    b = bq // Q
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_j = tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < H
    mask_j = offs_j < L * P
    mask_d = offs_d < D
    hl, wl, start, sample, mask_hj, inside, w, h_im, w_im, dx, dy, cx, cy = _level_and_location(
        coords_ptr, weights_ptr, ref_ptr, shapes_ptr, starts_ptr, bq, offs_h, offs_j, mask_h, mask_j,
        S, H, L, P, REF_LEVELS, FUSED, REF_DIM, ACC)
    h0f = tl.floor(h_im)
    w0f = tl.floor(w_im)
    lh = h_im - h0f
    lw = w_im - w0f
    hh = 1.0 - lh
    hw = 1.0 - lw
    h0 = h0f.to(tl.int64)
    w0 = w0f.to(tl.int64)
    row0 = b * S + start  # (BJ,) first position of the level in this batch element
    o00, m00, v00 = _corner(value_ptr, row0, h0, w0, hl, wl, inside, offs_h, offs_d, mask_d, H, D, ACC)
    o01, m01, v01 = _corner(value_ptr, row0, h0, w0 + 1, hl, wl, inside, offs_h, offs_d, mask_d, H, D, ACC)
    o10, m10, v10 = _corner(value_ptr, row0, h0 + 1, w0, hl, wl, inside, offs_h, offs_d, mask_d, H, D, ACC)
    o11, m11, v11 = _corner(value_ptr, row0, h0 + 1, w0 + 1, hl, wl, inside, offs_h, offs_d, mask_d, H, D, ACC)
    c00 = (hh * hw)[:, :, None]
    c01 = (hh * lw)[:, :, None]
    c10 = (lh * hw)[:, :, None]
    c11 = (lh * lw)[:, :, None]
    sampled = c00 * v00 + c01 * v01 + c10 * v10 + c11 * v11  # (BH, BJ, BD)
    out_offs = (bq * H + offs_h)[:, None] * D + offs_d[None, :]
    mask_hd = mask_h[:, None] & mask_d[None, :]
    if not BACKWARD:
        out = tl.sum(sampled * w[:, :, None], axis=1)
        tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask_hd)
    else:
        go = tl.load(grad_out_ptr + out_offs, mask=mask_hd, other=0.0).to(ACC)[:, None, :]
        g_w = tl.sum(go * sampled, axis=2)  # d loss / d weight, (BH, BJ)
        gwt = go * w[:, :, None]
        # d sample / d lw and d lh, then the chain to the location: d w_im / d x = w_l, d h_im / d y = h_l.
        d_lw = hh[:, :, None] * (v01 - v00) + lh[:, :, None] * (v11 - v10)
        d_lh = hw[:, :, None] * (v10 - v00) + lw[:, :, None] * (v11 - v01)
        g_x = tl.sum(gwt * d_lw, axis=2) * wl.to(ACC)[None, :]
        g_y = tl.sum(gwt * d_lh, axis=2) * hl.to(ACC)[None, :]
        g_x = tl.where(inside, g_x, 0.0)
        g_y = tl.where(inside, g_y, 0.0)
        # The value gradient is a scatter (many samples hit one element): atomics into a float32/64 buffer.
        tl.atomic_add(grad_value_ptr + o00, gwt * c00, mask=m00)
        tl.atomic_add(grad_value_ptr + o01, gwt * c01, mask=m01)
        tl.atomic_add(grad_value_ptr + o10, gwt * c10, mask=m10)
        tl.atomic_add(grad_value_ptr + o11, gwt * c11, mask=m11)
        out_ty = grad_coords_ptr.dtype.element_ty
        if FUSED:
            s = tl.sum(w * g_w, axis=1)  # = <grad_out, out> per head
            g_logit = w * (g_w - s[:, None])
            # where() after the product: an unusable level may have an infinite offset scale.
            g_ox = tl.where(inside, g_x * dx, 0.0)
            g_oy = tl.where(inside, g_y * dy, 0.0)
            tl.store(grad_coords_ptr + 2 * sample, g_ox.to(out_ty), mask=mask_hj)
            tl.store(grad_coords_ptr + 2 * sample + 1, g_oy.to(out_ty), mask=mask_hj)
            tl.store(grad_weights_ptr + sample, g_logit.to(out_ty), mask=mask_hj)
            lvl = offs_j // P
            ref_level = tl.where(REF_LEVELS == 1, 0, lvl)
            gref = grad_ref_ptr + ((bq * REF_LEVELS + ref_level) * REF_DIM)[None, :] + 0 * offs_h[:, None]
            tl.atomic_add(gref, g_x, mask=inside)
            tl.atomic_add(gref + 1, g_y, mask=inside)
            if REF_DIM == 4:
                tl.atomic_add(gref + 2, g_x * cx * 0.5 / P, mask=inside)
                tl.atomic_add(gref + 3, g_y * cy * 0.5 / P, mask=inside)
        else:
            tl.store(grad_coords_ptr + 2 * sample, g_x.to(out_ty), mask=mask_hj)
            tl.store(grad_coords_ptr + 2 * sample + 1, g_y.to(out_ty), mask=mask_hj)
            tl.store(grad_weights_ptr + sample, g_w.to(out_ty), mask=mask_hj)


# ----------------------------------------------------------------------------------------------------------
# Host wrappers: check, allocate, launch. Inputs are checked by rfkp.ops.checks before they get here.

_TILE_FORWARD = 2048  # elements of the (BLOCK_H, BLOCK_J, BLOCK_D) tile
_TILE_BACKWARD = 1024


def _blocks(heads: int, samples: int, channels: int, tile: int) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(max(channels, 1))
    block_j = triton.next_power_of_2(samples)
    block_h = 1
    while block_h < heads and 2 * block_h * block_j * block_d <= tile:
        block_h *= 2
    return block_h, block_j, block_d


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on the tensors' GPU (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
            coords: torch.Tensor, weights: torch.Tensor, reference: torch.Tensor | None,
            grad_output: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    B, S, H, D = value.shape
    _, Q, _, L, P, _ = coords.shape
    device = value.device
    value = value.contiguous()
    coords = coords.contiguous()
    weights = weights.contiguous()
    shapes = spatial_shapes.to(device=device, dtype=torch.int64).contiguous()
    starts = level_start_index.to(device=device, dtype=torch.int64).contiguous()
    fused = reference is not None
    ref = reference.contiguous() if fused else value
    ref_levels, ref_dim = (ref.shape[2], ref.shape[3]) if fused else (1, 2)
    acc = _acc_dtype(value.dtype)
    acc_tl = tl.float64 if acc == torch.float64 else tl.float32
    backward = grad_output is not None
    if backward:
        grad_value = torch.zeros(value.shape, dtype=acc, device=device)
        grad_coords = torch.zeros_like(coords)
        grad_weights = torch.zeros_like(weights)
        grad_ref = torch.zeros(ref.shape, dtype=acc, device=device) if fused else grad_value
        go = grad_output.contiguous()
        out = go
    else:
        out = value.new_empty(B, Q, H * D)
        grad_value = grad_coords = grad_weights = grad_ref = go = out
    if B * Q * H * D > 0:
        block_h, block_j, block_d = _blocks(H, L * P, D, _TILE_BACKWARD if backward else _TILE_FORWARD)
        grid = (B * Q, triton.cdiv(H, block_h))
        with _on(device):
            _msda_kernel[grid](
                value, shapes, starts, coords, weights, ref, go, out, grad_value, grad_coords, grad_weights,
                grad_ref, S, Q, H, D, L, P, ref_levels,
                BACKWARD=backward, FUSED=fused, REF_DIM=ref_dim, ACC=acc_tl,
                BLOCK_H=block_h, BLOCK_J=block_j, BLOCK_D=block_d, num_warps=4,
            )
    if not backward:
        return (out,)
    grads = [grad_value.to(value.dtype), grad_coords, grad_weights]
    if fused:
        grads.append(grad_ref.to(value.dtype))
    return tuple(grads)


def ms_deform_attn_forward(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                           sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Reference signature; returns (B, Q, H * D)."""
    return _launch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, None, None)[0]


def ms_deform_attn_backward(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                            level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                            attention_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (value, sampling_locations, attention_weights) from grad_output (B, Q, H * D)."""
    gv, gl, gw = _launch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, None,
                         grad_output)
    return gv, gl, gw


def ms_deform_attn_fused_forward(value: torch.Tensor, spatial_shapes: torch.Tensor,
                                 level_start_index: torch.Tensor, reference: torch.Tensor,
                                 sampling_offsets: torch.Tensor, attention_logits: torch.Tensor) -> torch.Tensor:
    """Fused signature (see rfkp.ops.ms_deform_attn_fused); returns (B, Q, H * D)."""
    return _launch(value, spatial_shapes, level_start_index, sampling_offsets, attention_logits, reference,
                   None)[0]


def ms_deform_attn_fused_backward(
    grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
    reference: torch.Tensor, sampling_offsets: torch.Tensor, attention_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (value, reference, sampling_offsets, attention_logits)."""
    gv, go, gl, gr = _launch(value, spatial_shapes, level_start_index, sampling_offsets, attention_logits,
                             reference, grad_output)
    return gv, gr, go, gl
