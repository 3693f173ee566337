"""The live status of monitor evaluation: what the leader saw last, shared with every node.

It changes on every evaluation, so it is not committed to the control-plane
log (which would then grow by one entry per evaluation): the leader keeps it
in memory and, after each pass that changed it, puts it — sealed with the
control key like the log, at ``_control/monitors/status`` — in the store. The
other nodes read that one object every few seconds, so a monitor's view on
any node carries ``state``, ``last_evaluated_at`` and ``last_value``. A new
leader starts from it, so schedules and ``for`` timers carry over a change of
leader. Losing it costs exactly that: states and notifications are committed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


from backends import Backend, Corrupt, NotFound
from helios.control.plane import Sealer
from helios.errors import ConfigError

__all__ = ["STATUS_KEY", "Board", "Live"]

STATUS_KEY = "_control/monitors/status"
_AAD = "helios/control/monitors/status"


@dataclass
class Live:
    """One monitor as the leader evaluated it last."""

    state: str = "ok"  # ok, firing or error
    evaluated_ns: int | None = None
    value: int | float | None = None
    error: str | None = None
    pending_since_ns: int | None = None  # the condition holds since (``for`` not reached yet)
    next_due_ns: int = 0
    version: int = 0  # the monitor's version evaluated; a change restarts its ``for`` timer


@dataclass
class Board:
    at_ns: int = 0
    epoch: int = 0
    node: str = ""
    monitors: dict[str, Live] = field(default_factory=dict)
    deliveries: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # id -> (attempts, error)

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at_ns, "epoch": self.epoch, "node": self.node,
                "monitors": {k: asdict(v) for k, v in self.monitors.items()},
                "deliveries": {k: list(v) for k, v in self.deliveries.items()}}

    @classmethod
    def from_json(cls, doc: Any) -> Board:
        """The inverse of ``to_json``; ValueError (TypeError, KeyError) on anything else."""
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        monitors = {str(k): Live(**v) for k, v in doc["monitors"].items()}
        deliveries = {str(k): (int(v[0]), v[1]) for k, v in doc["deliveries"].items()}
        return cls(int(doc["at"]), int(doc["epoch"]), str(doc["node"]), monitors, deliveries)

    async def publish(self, store: Backend, sealer: Sealer) -> None:
        await store.put(STATUS_KEY, sealer.seal(_AAD, self.to_json()))

    @classmethod
    async def fetch(cls, store: Backend, sealer: Sealer) -> Board | None:
        """The published board, None if there is none; ``Corrupt`` if it is not one."""
        try:
            data = await store.get(STATUS_KEY)
        except NotFound:
            return None
        try:
            return cls.from_json(sealer.open(_AAD, data, STATUS_KEY))
        except (ConfigError, ValueError, TypeError, KeyError) as exc:
            raise Corrupt(STATUS_KEY, f"not a monitor status: {exc}") from None
