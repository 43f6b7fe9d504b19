"""The learning-rate schedule every method trains with: linear warm-up, then cosine decay to zero."""
from __future__ import annotations

import math


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at 0-based `step` of a phase of `steps` steps.

    Warm-up: (step + 1) / warmup_steps until it reaches 1 (warmup_steps 0 counts as 1, no warm-up);
    times 0.5 * (1 + cos(pi * step / steps)), which falls from 1 at step 0 to 0 at step `steps`.
    """
    warmup = max(1, warmup_steps)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / steps)))
