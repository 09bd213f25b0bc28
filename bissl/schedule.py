"""Learning-rate schedules of the BiSSL stages."""

from __future__ import annotations

import math
from collections.abc import Callable


def cosine_lambda(total: int, warmup: int = 0) -> Callable[[int], float]:
    """Multiplier of the base lr at step ``s``: linear warm-up over ``warmup`` steps, then cosine
    decay from 1 to 0 over the remaining ``total − warmup`` steps."""

    def factor(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        span = max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup) / span)))

    return factor
