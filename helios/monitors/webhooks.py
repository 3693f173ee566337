"""Sending one webhook request: signed, checked against the allow policy, 10 s at most, bounded in flight.

Headers of every request::

    Content-Type: application/json
    X-Helios-Signature: sha256=<hex HMAC-SHA256 of the body with the monitor's secret>
    X-Helios-Notification-Id: <the payload's id>
    X-Helios-Test: 1                       only on POST /api/v1/monitors/{id}/test

A 2xx answer is success; anything else (another status, a refused or reset
connection, a timeout, a destination the policy refuses) is a failed attempt
that the caller may retry. Redirects are not followed. Proxy variables of
the environment are ignored, so the allow policy judges the real destination.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import trio

from helios import __version__
from helios.monitors.allow import Refused, WebhookPolicy
from helios.monitors.rules import sign

__all__ = ["ATTEMPT_TIMEOUT_S", "MAX_IN_FLIGHT", "Outcome", "Webhooks"]

ATTEMPT_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 16  # webhook requests open at once on a node; one more waits for a slot


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None = None
    error: str | None = None


class Webhooks:
    def __init__(self, policy: WebhookPolicy, *, timeout_s: float = ATTEMPT_TIMEOUT_S,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self.limiter = trio.CapacityLimiter(max_in_flight)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s), follow_redirects=False, trust_env=False,
                limits=httpx.Limits(max_connections=self.limiter.total_tokens, max_keepalive_connections=4),
                headers={"User-Agent": f"helios/{__version__}"})
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def post(self, url: str, body: bytes, secret: str | None, notification_id: str, *,
                   test: bool = False) -> Outcome:
        """One attempt; never raises for anything the receiver or the network does."""
        headers = {"Content-Type": "application/json", "X-Helios-Notification-Id": notification_id}
        if secret:
            headers["X-Helios-Signature"] = sign(secret, body)
        if test:
            headers["X-Helios-Test"] = "1"
        async with self.limiter:
            try:
                await self.policy.check_resolved(url)
                with trio.fail_after(self.timeout_s):  # the whole exchange, body included
                    reply = await self._http().post(url, content=body, headers=headers)
            except Refused as exc:
                return Outcome(False, None, str(exc))
            except trio.TooSlowError:
                return Outcome(False, None, f"no answer within {self.timeout_s:g} s")
            except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
                return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= reply.status_code < 300:
            return Outcome(True, reply.status_code)
        return Outcome(False, reply.status_code, f"the receiver answered {reply.status_code}")
