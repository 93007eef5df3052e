"""Public ops. Each has a PyTorch reference with the same signature (the oracle and the CPU fallback)."""

from rfkp.ops.ms_deform_attn import ms_deform_attn_reference

# The network calls this name; the kernel layer re-points it through one explicit capability check.
multi_scale_deformable_attention = ms_deform_attn_reference

__all__ = ["ms_deform_attn_reference", "multi_scale_deformable_attention"]
