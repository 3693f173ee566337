"""Monitors: leader-elected evaluation, committed transitions, signed webhook delivery (``service``)."""

__all__: list[str] = []
