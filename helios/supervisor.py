"""The failure policy of background work, enforced in one place.

    Operating errors are handled and reported; programmer errors crash.

An *operating error* is something the world did to us: the shared store is
slow, down or refuses (``backends.StoreError``), the local disk failed
(``OSError``: full, read-only, a file gone), an object in the store or a block
on disk is not what it should be (``backends.Corrupt``, ``CorruptBlock``), a
deadline passed (``trio.TooSlowError``). Background loops survive them: the
error is logged with its context, counted in ``/metrics``
(``helios_background_errors_total{task,kind}``), shown in ``/api/v1/cluster``
and ``/readyz`` under the task and subject (a partition, a store key) it
concerns, and the step is retried with exponential backoff and jitter. Other
subjects of the same loop (other partitions) and other loops carry on. A
corrupt object is *quarantined by name*: listed in the report until it is
fixed or removed, never skipped in silence.

A *programmer error* (``AssertionError``, ``TypeError``, ``KeyError``…) is a
bug: it propagates to the root nursery and ends the node, loudly, rather
than leaving it running in a state nobody designed. Code that parses store
content therefore converts parse failures into ``Corrupt`` at that boundary
(``helios.replication.shared.decode_manifest``, the change-feed key parser,
the lease record reader, the control-log opener).

Shapes::

    health = Health()
    await supervise(health, "pull", replicator.pull_once, interval_s=1.25)   # a whole loop
    with health.isolate("pull", "default/2026-11-27"):                       # one subject of it
        await sync_partition(...)
    health.quarantine("pull", "_changes/zz-garbage", "not a change-feed key")
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator

import trio

from backends import Corrupt, StoreError, Unavailable
from helios import log
from helios.storage.blocks import CorruptBlock

__all__ = ["OPERATING_ERRORS", "Health", "Problem", "backoff_s", "error_kind", "supervise"]

_log = log.get("helios.supervisor")

MAX_PROBLEMS = 1000  # bound on the subjects reported at once; the rest are counted only
MAX_BACKOFF_S = 30.0


OPERATING_ERRORS: tuple[type[BaseException], ...] = (StoreError, OSError, trio.TooSlowError, CorruptBlock)


def error_kind(exc: BaseException) -> str:
    """A coarse label for /metrics: ``corrupt``, ``store``, ``disk`` or ``timeout``."""
    if isinstance(exc, (Corrupt, CorruptBlock)):
        return "corrupt"
    if isinstance(exc, StoreError):
        return "store"
    if isinstance(exc, OSError):
        return "disk"
    return "timeout"


def backoff_s(interval_s: float, failures: int, rng: random.Random | None = None,
              cap_s: float = MAX_BACKOFF_S) -> float:
    """The delay after ``failures`` consecutive failures: doubling from ``interval_s``, capped, ±25 % jitter."""
    base = min(interval_s * 2 ** min(failures, 16), max(cap_s, interval_s))
    return base * (0.75 + 0.5 * (rng or random).random())


@dataclass
class Problem:
    task: str
    subject: str  # "" for the whole task; a partition "dataset/YYYY-MM-DD"; a store key
    kind: str
    error: str
    first_ns: int
    last_ns: int
    count: int = 1
    quarantined: bool = False

    def view(self) -> dict[str, Any]:
        from helios import timeutil

        return {"task": self.task, "subject": self.subject or None, "kind": self.kind, "error": self.error,
                "since": timeutil.format_ns(self.first_ns), "last": timeutil.format_ns(self.last_ns),
                "count": self.count, "quarantined": self.quarantined}


class Health:
    """What is failing now, per (task, subject), and how often each kind failed (for /metrics)."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self.clock = clock
        self.problems: dict[tuple[str, str], Problem] = {}
        self.errors: Counter[tuple[str, str]] = Counter()  # (task, kind) → count, never reset
        self.unreported = 0  # problems not kept because MAX_PROBLEMS were already kept
        self._blocking: dict[tuple[str, str], set[str]] = {}  # (task, subject) -> corrupt keys it hit

    def fail(self, task: str, subject: str, exc: BaseException, *, quarantined: bool = False) -> Problem | None:
        kind = error_kind(exc) if not quarantined else "corrupt"
        self.errors[(task, kind)] += 1
        now = self.clock()
        key = (task, subject)
        problem = self.problems.get(key)
        if problem is None:
            if len(self.problems) >= MAX_PROBLEMS:
                self.unreported += 1
                return None
            problem = self.problems[key] = Problem(task, subject, kind, str(exc), now, now,
                                                   quarantined=quarantined)
        else:
            problem.count += 1
            problem.last_ns, problem.kind, problem.error = now, kind, str(exc)
            problem.quarantined = problem.quarantined or quarantined
        if problem.count in (1, 10) or problem.count % 100 == 0:
            log.log(_log, logging.WARNING if kind != "corrupt" else logging.ERROR,
                    f"{task} failed; will retry" if not quarantined else f"{task}: quarantined a corrupt object",
                    subject=subject or None, kind=kind, error=str(exc), failures=problem.count)
        return problem

    def quarantine(self, task: str, key: str, reason: str) -> None:
        """Report a corrupt store object by name; the caller skips it and carries on."""
        self.fail(task, key, Corrupt(key, reason), quarantined=True)

    def ok(self, task: str, subject: str = "") -> None:
        """``subject`` of ``task`` works again (or the quarantined object is gone)."""
        problem = self.problems.pop((task, subject), None)
        if problem is not None:
            log.log(_log, logging.INFO, f"{task} recovered", subject=subject or None, failures=problem.count)

    @contextlib.contextmanager
    def isolate(self, task: str, subject: str) -> Iterator[None]:
        """Run one subject of a task: an operating error is reported for it alone and swallowed.

        ``Unavailable`` is the exception: the store is out for every subject,
        so it propagates and the whole task backs off (one report, not one per
        partition).
        """
        try:
            yield
        except Unavailable:
            raise
        except Corrupt as exc:  # reported under the object's own name, cleared when the subject works again
            self.fail(task, exc.key, exc, quarantined=True)
            self._blocking.setdefault((task, subject), set()).add(exc.key)
        except OPERATING_ERRORS as exc:
            self.fail(task, subject, exc)
        else:
            if (task, subject) in self.problems:
                self.ok(task, subject)
            for key in self._blocking.pop((task, subject), ()):
                self.ok(task, key)

    @property
    def healthy(self) -> bool:
        return not self.problems and not self.unreported

    def snapshot(self) -> dict[str, Any]:
        problems = sorted(self.problems.values(), key=lambda p: (p.task, p.subject))
        return {"healthy": self.healthy,
                "problems": [p.view() for p in problems if not p.quarantined],
                "quarantined": [p.view() for p in problems if p.quarantined],
                "unreported": self.unreported}

    def metrics_lines(self) -> list[str]:
        lines = ["# TYPE helios_background_errors_total counter"]
        lines += [f'helios_background_errors_total{{task="{task}",kind="{kind}"}} {n}'
                  for (task, kind), n in sorted(self.errors.items())]
        lines += ["# TYPE helios_unhealthy_subjects gauge",
                  f"helios_unhealthy_subjects {sum(not p.quarantined for p in self.problems.values())}",
                  "# TYPE helios_quarantined_objects gauge",
                  f"helios_quarantined_objects {sum(p.quarantined for p in self.problems.values())}"]
        return lines


async def supervise(health: Health, task: str, step: Callable[[], Awaitable[Any]], *, interval_s: float,
                    first_delay_s: float = 0.0, rng: random.Random | None = None,
                    sleep: Callable[[float], Awaitable[None]] = trio.sleep) -> None:
    """Run ``step`` every ``interval_s`` forever, under the failure policy above.

    After an operating error the task is reported unhealthy and retried after
    ``backoff_s``; a success clears it. Anything else propagates (a bug).
    """
    failures = 0
    blocked_by: set[str] = set()  # subjects this loop reported (the task itself, or a corrupt key)
    if first_delay_s:
        await sleep(first_delay_s)
    while True:
        try:
            await step()
        except OPERATING_ERRORS as exc:
            failures += 1
            subject = exc.key if isinstance(exc, Corrupt) else ""
            health.fail(task, subject, exc, quarantined=isinstance(exc, Corrupt))
            blocked_by.add(subject)
            await sleep(backoff_s(interval_s, failures, rng))
            continue
        for subject in blocked_by | {""}:  # the step went through: nothing blocks the task any more
            if (task, subject) in health.problems:
                health.ok(task, subject)
        blocked_by.clear()
        failures = 0
        await sleep(interval_s)
