"""Login throttling: failed logins counted per username and per client address, with backoff.

Each username and each client address is a *key* with a count of failed
logins. Below its limit a key logs in freely; from the limit on, each failure
makes the key wait ``backoff_s * 2^(failures - limit)`` seconds (at most
``backoff_max_s``) from that failure. A login for a waiting key is refused at
once with 429 and ``Retry-After``, without checking its password (so a guess
during the wait is not even tried, right or wrong).

- Every username sent is counted, whether the user exists or not, so that
  neither the answers nor their timing tell which users exist. Names that
  cannot be usernames share one key.
- A successful login clears its username's count, not its address's: one
  valid account must not reset a spray over many usernames.
- A key with no failure for ``4 * backoff_max_s`` is forgotten, and at most
  ``max_keys`` keys are kept (the least recently failed go first).
- The state is per node, in memory: a restart forgets it, and a client that
  spreads its guesses over N nodes gets N times the budget (each node still
  bounds it). Behind a proxy every client has the proxy's address; the
  username limit still holds.
- Locking out is possible by design: anyone can make a username wait (at
  most ``backoff_max_s`` per failure); API tokens are not affected.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from helios.errors import HeliosError

__all__ = ["MAX_KEYS", "LoginThrottle", "TooManyLogins"]

MAX_KEYS = 100_000  # about 100 bytes each


class TooManyLogins(HeliosError):
    """429: wait ``retry_after_s`` (whole seconds, ≥ 1) before trying again."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def payload(self) -> dict[str, object]:
        return {"error": str(self), "retry_after_s": self.retry_after_s}


@dataclass
class _Count:
    failures: int
    last_s: float  # the last failure (clock seconds)
    until_s: float  # no login for this key before this


class LoginThrottle:
    def __init__(self, *, user_failures: int, address_failures: int, backoff_s: float, backoff_max_s: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        assert user_failures > 0 and address_failures > 0 and 0 < backoff_s <= backoff_max_s and max_keys > 0
        self._limits = {"user": user_failures, "address": address_failures}
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.forget_after_s = 4 * backoff_max_s
        self._clock = clock
        self._max_keys = max_keys
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()  # oldest last failure first

    def __len__(self) -> int:
        return len(self._counts)

    def check(self, username: str, address: str) -> None:
        """Raise TooManyLogins if the username or the address must wait."""
        now = self._clock()
        self._forget(now)
        wait_s = max((c.until_s - now for c in self._get(username, address)), default=0.0)
        if wait_s > 0:
            raise TooManyLogins("too many failed logins for this username or from this address; "
                                "wait and try again", max(1, math.ceil(wait_s)))

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        for key in (("user", username), ("address", address)):
            count = self._counts.pop(key, None) or _Count(0, now, now)
            count.failures += 1
            count.last_s = now
            over = count.failures - self._limits[key[0]]
            if over >= 0:
                count.until_s = now + min(self.backoff_max_s, self.backoff_s * 2.0 ** min(over, 64))
            self._counts[key] = count  # to the end: the most recent failure
        while len(self._counts) > self._max_keys:
            self._counts.popitem(last=False)

    def succeeded(self, username: str) -> None:
        self._counts.pop(("user", username), None)

    def _get(self, username: str, address: str) -> list[_Count]:
        found = (self._counts.get(("user", username)), self._counts.get(("address", address)))
        return [c for c in found if c is not None]

    def _forget(self, now: float) -> None:
        while self._counts:
            key, oldest = next(iter(self._counts.items()))
            if now - oldest.last_s <= self.forget_after_s:
                return
            del self._counts[key]
