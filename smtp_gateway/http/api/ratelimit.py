"""Per-key rate limit of the admin API: a token bucket per key id, in this process's memory.

The clock is passed in (monotonic seconds), so the arithmetic is testable without sleeping.
Each ``serve`` worker keeps its own buckets: with ``--workers N`` a key may reach N times the rate
(documented in docs/api.md), the same trade-off as the SMTP AUTH throttle.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# Idle buckets are dropped once this many keys are tracked, so unknown-key floods cannot grow it.
MAX_TRACKED_KEYS = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``burst`` requests at once per key, refilled at ``per_minute`` requests a minute."""

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float]) -> None:
        """A limiter; ``clock`` returns monotonic seconds."""
        if per_minute <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> float:
        """Take one request for ``key``: 0.0 when allowed, else the seconds to wait before retrying."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_KEYS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely (they hold no state worth keeping)."""
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst]:
            del self._buckets[key]


def retry_after_header(wait: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
