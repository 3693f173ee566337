"""Where monitor webhooks may go: the ``monitor_webhook_allow`` policy.

The setting (``HELIOS_MONITOR_WEBHOOK_ALLOW``) is a comma-separated list of
entries, each one of::

    *                   any destination (the default)
    10.0.0.0/8          an IPv4 or IPv6 network (a bare address is a /32 or /128)
    hooks.example.org   a host name, exactly (case-insensitive)
    *.example.org       any host name under a domain

and any entry may start with ``!`` to deny instead. A destination is refused
if its host name matches a denied name or any address it resolves to lies in
a denied network; otherwise it is allowed if ``*`` is listed, its name
matches an allowed name, or every address it resolves to lies in allowed
networks. So ``!127.0.0.0/8,!10.0.0.0/8,!169.254.0.0/16,*`` forbids
internal addresses, and ``hooks.slack.com`` allows Slack alone.

Checked twice: when a monitor is created or changed (without DNS: a literal
address, a denied name, or a name no entry could allow is refused with 400),
and before every delivery, against the addresses the host resolves to then.
Redirects are never followed, so a receiver cannot bounce a request onward.
Known limit: the host is resolved again by the HTTP client when it connects,
so a DNS answer that changes between the check and the connection (DNS
rebinding) is not caught; deny by name as well as by network where it matters.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

__all__ = ["Refused", "WebhookPolicy", "parse_allow"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*\.?$")
MAX_ENTRIES = 256


class Refused(Exception):
    """The policy forbids this destination; the message says why."""


def parse_allow(text: str) -> tuple[str, ...]:
    """Validate the setting; returns its entries, normalised (ValueError names the bad one)."""
    entries = tuple(e.strip().lower() for e in text.split(",") if e.strip())
    if not entries:
        raise ValueError("list at least one entry ('*' allows any destination)")
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} entries")
    for entry in entries:
        body = entry[1:] if entry.startswith("!") else entry
        if body == "*":
            continue
        try:
            ipaddress.ip_network(body, strict=False)
            continue
        except ValueError:
            pass
        if not _HOST.match(body):
            raise ValueError(f"{entry!r} is neither a network (10.0.0.0/8), a host, *.domain nor *")
    return entries


@dataclass(frozen=True)
class _Rules:
    any: bool
    names: tuple[str, ...]
    networks: tuple[IPNetwork, ...]


def _rules(entries: list[str]) -> _Rules:
    names, networks, any_ = [], [], False
    for body in entries:
        if body == "*":
            any_ = True
            continue
        try:
            networks.append(ipaddress.ip_network(body, strict=False))
        except ValueError:
            names.append(body.rstrip("."))
    return _Rules(any_, tuple(names), tuple(networks))


def _name_matches(host: str, names: tuple[str, ...]) -> bool:
    for name in names:
        if name.startswith("*."):
            if host.endswith(name[1:]):
                return True
        elif host == name:
            return True
    return False


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IPNetwork, ...]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)


class WebhookPolicy:
    """The parsed setting; ``check`` (static) and ``check_resolved`` (before sending)."""

    def __init__(self, entries: tuple[str, ...] = ("*",)) -> None:
        self.entries = entries
        self.deny = _rules([e[1:] for e in entries if e.startswith("!")])
        self.allow = _rules([e for e in entries if not e.startswith("!")])

    @staticmethod
    def _host(url: str) -> str:
        host = urlsplit(url).hostname
        if not host:
            raise Refused("the webhook URL has no host")
        return host.lower().rstrip(".")

    def check(self, url: str) -> None:
        """Refuse what can be refused without DNS (creation time)."""
        host = self._host(url)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            self._decide(host, [address])
            return
        if _name_matches(host, self.deny.names):
            raise Refused(f"webhook host {host!r} is denied by monitor_webhook_allow")
        if not (self.allow.any or self.allow.networks or _name_matches(host, self.allow.names)):
            raise Refused(f"webhook host {host!r} is not allowed by monitor_webhook_allow")

    async def check_resolved(self, url: str) -> None:
        """Refuse unless the host, as it resolves now, is allowed (before every delivery)."""
        host = self._host(url)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            if self.entries == ("*",):
                return  # the default: nothing to check, no lookup needed
            port = urlsplit(url).port or 443
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise Refused(f"cannot resolve webhook host {host!r}: {exc}") from None
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        self._decide(host, addresses)

    def _decide(self, host: str, addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
        if _name_matches(host, self.deny.names) or any(_in(a, self.deny.networks) for a in addresses):
            raise Refused(f"webhook host {host!r} is denied by monitor_webhook_allow")
        if self.allow.any or _name_matches(host, self.allow.names):
            return
        if addresses and all(_in(a, self.allow.networks) for a in addresses):
            return
        raise Refused(f"webhook host {host!r} is not allowed by monitor_webhook_allow")
