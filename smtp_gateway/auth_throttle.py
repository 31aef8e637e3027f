"""AUTH brute-force back-off, per peer address and per login (Postfix's anvil, for passwords).

A few failures are free (a mailer with a typo). Past that, every further failure locks the
address — and, past a higher threshold, the login — out for a period that doubles with each
failure, up to a maximum. While locked out AUTH is answered ``454 4.7.0`` without checking the
password at all, so a guesser gets neither answers nor scrypt CPU. A success clears both
counters. State is per process and in memory: a restart forgives, which is the usual trade-off.

The per-login lockout lets an attacker lock a client out by failing on purpose; its threshold is
therefore higher than the per-address one, and a client's trusted networks never need AUTH.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    """How forgiving AUTH is (defaults suit a handful of mailers per client)."""

    free_failures_per_ip: int = 5
    free_failures_per_login: int = 20
    base_lockout_seconds: float = 2.0
    max_lockout_seconds: float = 900.0
    # Every failed AUTH is answered only after this delay: a tarpit even below the thresholds.
    failure_delay_seconds: float = 1.0
    forget_after_seconds: float = 3600.0
    max_tracked: int = 100_000


@dataclass(slots=True)
class _Record:
    """Failures of one key since its last success (or since it was forgotten)."""

    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


@dataclass
class AuthThrottle:
    """Counts AUTH failures by peer address and by login; says how long each is locked out."""

    config: ThrottleConfig = field(default_factory=ThrottleConfig)
    clock: Callable[[], float] = time.monotonic
    _records: dict[tuple[str, str], _Record] = field(default_factory=dict)

    def locked_for(self, ip: str, login: str) -> float:
        """Seconds until AUTH from ``ip`` for ``login`` may be tried again (0: it may now)."""
        now = self.clock()
        remaining = 0.0
        for key in (("ip", ip), ("login", login)):
            record = self._records.get(key)
            if record is not None:
                remaining = max(remaining, record.locked_until - now)
        return remaining

    def failed(self, ip: str, login: str) -> tuple[int, int, float]:
        """Record a failure; returns (failures of ``ip``, failures of ``login``, lockout seconds now)."""
        now = self.clock()
        if len(self._records) >= self.config.max_tracked:
            self._forget(now)
        ip_record = self._bump(("ip", ip), self.config.free_failures_per_ip, now)
        login_record = self._bump(("login", login), self.config.free_failures_per_login, now)
        lockout = max(ip_record.locked_until, login_record.locked_until) - now
        return ip_record.failures, login_record.failures, max(lockout, 0.0)

    def succeeded(self, ip: str, login: str) -> None:
        """A correct password: forget the failures of this address and this login."""
        self._records.pop(("ip", ip), None)
        self._records.pop(("login", login), None)

    def _bump(self, key: tuple[str, str], free: int, now: float) -> _Record:
        """Count one failure of ``key`` and extend its lockout once past ``free`` failures."""
        record = self._records.setdefault(key, _Record())
        record.failures += 1
        record.last_failure = now
        over = record.failures - free
        if over > 0:
            lockout = min(
                self.config.base_lockout_seconds * 2 ** min(over - 1, 30), self.config.max_lockout_seconds
            )
            record.locked_until = max(record.locked_until, now + lockout)
        return record

    def _forget(self, now: float) -> None:
        """Drop quiet records; if every record is recent, drop the oldest half (memory stays bounded)."""
        horizon = now - self.config.forget_after_seconds
        quiet = [k for k, r in self._records.items() if r.last_failure < horizon and r.locked_until < now]
        for key in quiet:
            del self._records[key]
        if len(self._records) >= self.config.max_tracked:
            by_age = sorted(self._records, key=lambda k: self._records[k].last_failure)
            for key in by_age[: len(by_age) // 2]:
                del self._records[key]
