"""Clamp limits that keep the matching costs and losses finite in float32 whatever the predictions hold.

Predictions are cast to float32 first (they may be fp16/bf16 under autocast), then clamped. The limits lie
far outside anything a working model produces (fp16 values never reach ``LOGIT_LIMIT``; normalised
coordinates live near [0, 1]), so they only bite on runaway predictions, whose gradient they cut; without
them a single bf16 value near 1e38 would turn a summed loss into inf.
"""

from __future__ import annotations

#: Class, findable and visible logits.
LOGIT_LIMIT = 1e6
#: Normalised box and keypoint coordinates.
COORD_LIMIT = 1e3
#: ``log_l11`` and ``log_l22`` of the precision Cholesky factor; ``|l21| <= exp(LOG_L_LIMIT)``.
LOG_L_LIMIT = 15.0
#: Smallest normalised target box area used as a divisor.
MIN_AREA = 1e-8
