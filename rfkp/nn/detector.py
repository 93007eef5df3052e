"""The RF-DETR Keypoint network: windowed ViT -> two projectors -> two-stage queries -> keypoint decoder -> heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rfkp.config import ModelConfig
from rfkp.nn.decoder import Decoder
from rfkp.nn.keypoint_queries import KeypointQueryInit
from rfkp.nn.layers import MLP, apply_box_delta, decode_keypoint_delta
from rfkp.nn.linear import Linear
from rfkp.nn.projector import Projector
from rfkp.nn.two_stage import TwoStage
from rfkp.nn.vit import WindowedViT


@dataclass(frozen=True)
class SubArchitecture:
    """Call-time architecture choices (weight-sharing NAS knobs). None means the model's default."""

    patch_size: int | None = None
    num_windows: int | None = None
    dec_layers: int | None = None
    num_queries: int | None = None


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.vit = WindowedViT(
            dim=cfg.vit_dim,
            depth=cfg.vit_depth,
            num_heads=cfg.vit_heads,
            mlp_ratio=cfg.vit_mlp_ratio,
            patch_size=cfg.patch_size,
            pos_grid=cfg.pos_grid,
            out_indexes=tuple(cfg.out_feature_indexes),
        )
        in_ch = cfg.vit_dim * len(cfg.out_feature_indexes)
        self.projector = Projector(in_ch, cfg.hidden_dim, cfg.projector_blocks, cfg.projector_norm)
        if cfg.dual_projector:
            self.keypoint_projector = Projector(in_ch, cfg.hidden_dim, cfg.projector_blocks, cfg.projector_norm)

        # the second map is read by the keypoint cross-attention, and by the instance stream when not kp-only;
        # a model with neither (a peer option set) keeps the projector's weights but does not run it
        self.second_map_read = cfg.dual_projector and (cfg.keypoint_cross_attn or not cfg.dual_projector_kp_only)

    def forward(self, x: torch.Tensor, patch_size: int, num_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(first projector's map, second projector's map, or the first again when there is no second
        projector or nothing reads its map)."""
        feats = self.vit(x, patch_size=patch_size, num_windows=num_windows)
        first = self.projector(feats)
        return first, self.keypoint_projector(feats) if self.second_map_read else first


class KeypointDETR(nn.Module):
    """Maps a normalised image batch (B, 3, H, W) to class logits, boxes and per-keypoint Gaussians.

    Outputs (peer-compatible layout): `pred_logits (B, Q, num_classes)`, `pred_boxes (B, Q, 4)` cxcywh in [0, 1],
    `pred_keypoints (B, Q, C_kp * K_max, 8)` = [x, y, findable_logit, visible_logit, log_l11, l21, log_l22,
    class_term] with x, y normalised image coordinates, keypoints of class c in slots [c*K_max, c*K_max + K_c)
    and zeros in the padding slots. In training mode (all query groups) the output also holds `aux_outputs`
    (earlier decoder layers) and `enc_outputs` (two-stage proposals).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        kpc = cfg.num_keypoints_per_class
        if cfg.total_keypoints == 0:
            raise ValueError("at least one class must have keypoints")
        self.backbone = Backbone(cfg)
        self.two_stage = TwoStage(dim=d, num_classes=cfg.num_classes, groups=cfg.group_detr)
        kd = cfg.keypoint_dim
        self.keypoint_queries = KeypointQueryInit(d, cfg.total_keypoints, kd)
        self.keypoint_queries_enc = KeypointQueryInit(d, cfg.total_keypoints, kd)
        self.enc_out_keypoint_embed = nn.ModuleList(MLP(kd, kd, 8, 3) for _ in range(cfg.group_detr))
        self.decoder = Decoder(
            num_layers=cfg.dec_layers,
            dim=d,
            num_keypoints_per_class=kpc,
            kp_dim=kd,
            inter_instance_kp_attn=cfg.inter_instance_kp_attn,
            keypoint_cross_attn=cfg.keypoint_cross_attn,
            sa_heads=cfg.sa_heads,
            ca_heads=cfg.ca_heads,
            points=cfg.ca_points,
            dim_feedforward=cfg.dim_feedforward,
        )
        self.class_embed = Linear(d, cfg.num_classes)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.keypoint_embed = MLP(kd, kd, 8, 3)
        self.refpoint_embed = nn.Embedding(cfg.num_queries * cfg.group_detr, 4)
        if cfg.decoder_registers:  # extra decoder tokens appended to every group, dropped from the outputs
            self.register_tokens = nn.Parameter(torch.randn(cfg.decoder_registers, d))
            self.register_ref_points = nn.Parameter(torch.zeros(cfg.decoder_registers, 4))
        self.query_feat = nn.Embedding(cfg.num_queries * cfg.group_detr, d)
        # compact keypoint index -> padded slot, and the active-slot mask (C_kp, K_max)
        kmax = cfg.max_keypoints
        slots = [c * kmax + j for c, k in enumerate(kpc) for j in range(k)]
        self.register_buffer("kp_slots", torch.tensor(slots, dtype=torch.long), persistent=False)
        # padded slot -> compact index, or sumK (a zero row appended by _pad_keypoints) for inactive slots
        source = torch.full((len(kpc) * kmax,), cfg.total_keypoints, dtype=torch.long)
        source[self.kp_slots] = torch.arange(len(slots))
        self.register_buffer("kp_slot_source", source, persistent=False)
        active = torch.zeros(len(kpc), kmax, dtype=torch.bool)
        for c, k in enumerate(kpc):
            active[c, :k] = True
        self.register_buffer("kp_active", active, persistent=False)

    # -- heads -------------------------------------------------------------------------------------------------
    def _pad_keypoints(self, compact: torch.Tensor) -> torch.Tensor:
        """(..., sumK, 8) -> (..., C_kp * K_max, 8) with zeros in inactive slots (a gather: it exports to ONNX
        with a dynamic batch, an indexed assignment does not)."""
        padded = torch.cat([compact, torch.zeros_like(compact[..., :1, :])], dim=-2)
        return padded.index_select(-2, self.kp_slot_source)

    def _class_boost(self, keypoints: torch.Tensor) -> torch.Tensor:
        """Sum of each keypointed class's class_term, as (..., num_classes) logits (zeros for other classes)."""
        terms = keypoints[..., 7].unflatten(-1, tuple(self.kp_active.shape)) * self.kp_active.to(keypoints.dtype)
        boost = terms.sum(-1)
        pad = self.cfg.num_classes - boost.shape[-1]
        return torch.nn.functional.pad(boost, (0, pad))

    def _predict(self, hs: torch.Tensor, kp_hs: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        keypoints = self._pad_keypoints(decode_keypoint_delta(self.keypoint_embed(kp_hs), ref))
        return {
            "pred_logits": self.class_embed(hs) + self._class_boost(keypoints),
            "pred_boxes": apply_box_delta(self.bbox_embed(hs), ref),
            "pred_keypoints": keypoints,
        }

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        arch: SubArchitecture | None = None,
        *,
        groups: int | None = None,
        with_aux: bool | None = None,
    ) -> dict:
        """x: (B, 3, H, W) normalised, H and W multiples of patch_size * num_windows.

        groups: query groups to run (default: all in training, 1 in eval); with_aux: also return `aux_outputs`
        and `enc_outputs` (default: in training).
        """
        cfg = self.cfg
        arch = arch or SubArchitecture()
        patch = arch.patch_size or cfg.patch_size
        windows = arch.num_windows or cfg.num_windows
        nq = arch.num_queries or cfg.num_queries
        if not 1 <= nq <= cfg.num_queries:
            raise ValueError(f"num_queries must be in [1, {cfg.num_queries}], got {nq}")
        if groups is None:
            groups = cfg.group_detr if self.training else 1
        if not 1 <= groups <= cfg.group_detr:
            raise ValueError(f"groups must be in [1, {cfg.group_detr}], got {groups}")
        if with_aux is None:
            with_aux = self.training

        memory_map, kp_memory_map = self.backbone(x, patch, windows)
        B, C, h, w = memory_map.shape
        memory = memory_map.flatten(2).transpose(1, 2)
        kp_memory = kp_memory_map.flatten(2).transpose(1, 2)
        spatial_shapes = torch.tensor([[h, w]], dtype=torch.long, device=x.device)
        level_start_index = torch.zeros(1, dtype=torch.long, device=x.device)

        enc_feat, enc_boxes, enc_logits = self.two_stage(memory, (h, w), nq, groups)
        k = enc_feat.shape[1] // groups  # queries per group actually selected (<= nq)

        # learned queries of each used group, the first k of each
        rows = torch.cat([torch.arange(k, device=x.device) + g * cfg.num_queries for g in range(groups)])
        tgt = self.query_feat.weight[rows].unsqueeze(0).expand(B, -1, -1)
        ref = apply_box_delta(self.refpoint_embed.weight[rows].unsqueeze(0), enc_boxes.detach())
        if cfg.decoder_registers:
            tgt, ref = self._with_registers(tgt, ref, groups)
        kp_tgt = self.keypoint_queries(tgt)

        # the released layout: the instance stream reads the first projector, the keypoint stream the second;
        # dual_projector_kp_only=False: both read the second (the two-stage proposals always read the first)
        hs, kp_hs = self.decoder(
            tgt,
            kp_tgt,
            ref,
            memory if cfg.dual_projector_kp_only else kp_memory,
            kp_memory,
            spatial_shapes,
            level_start_index,
            num_layers=arch.dec_layers,
            groups=groups,
        )
        if cfg.decoder_registers:
            hs = [self._without_registers(h, groups) for h in hs]
            kp_hs = [self._without_registers(h, groups) for h in kp_hs]
            ref = self._without_registers(ref, groups)
        outputs = [self._predict(hs_l, kp_l, ref) for hs_l, kp_l in zip(hs, kp_hs)]
        out = dict(outputs[-1])
        if with_aux:
            out["aux_outputs"] = outputs[:-1]
            enc_kp = self._enc_keypoints(enc_feat, enc_boxes, groups)
            out["enc_outputs"] = {
                "pred_logits": enc_logits + self._class_boost(enc_kp),
                "pred_boxes": enc_boxes,
                "pred_keypoints": enc_kp,
            }
        return out

    def _with_registers(self, tgt: torch.Tensor, ref: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the register tokens (and their reference boxes) to each group's queries."""
        B = tgt.shape[0]
        reg = self.register_tokens.unsqueeze(0).expand(B, -1, -1)
        reg_ref = self.register_ref_points.unsqueeze(0).expand(B, -1, -1)
        tgt = torch.cat([torch.cat([t, reg], dim=1) for t in tgt.chunk(groups, dim=1)], dim=1)
        ref = torch.cat([torch.cat([r, reg_ref], dim=1) for r in ref.chunk(groups, dim=1)], dim=1)
        return tgt, ref

    def _without_registers(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        """Drop the register rows from each group of (B, groups * (k + R), ...)."""
        n = self.cfg.decoder_registers
        return torch.cat([c[:, : c.shape[1] - n] for c in x.chunk(groups, dim=1)], dim=1)

    def _enc_keypoints(self, enc_feat: torch.Tensor, enc_boxes: torch.Tensor, groups: int) -> torch.Tensor:
        kp_mem = self.keypoint_queries_enc(enc_feat)
        chunks = []
        for g, (m, b) in enumerate(zip(kp_mem.chunk(groups, dim=1), enc_boxes.chunk(groups, dim=1))):
            chunks.append(decode_keypoint_delta(self.enc_out_keypoint_embed[g](m), b))
        return self._pad_keypoints(torch.cat(chunks, dim=1))
