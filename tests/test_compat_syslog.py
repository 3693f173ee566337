"""Syslog listeners: util-linux `logger` over TCP (RFC 5424) and UDP (RFC 3164), framing and bounds."""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any

import orjson
import pytest

from helios.ingest.syslog import Framer, parse_message
from support import Server, wait_until

ROWS = 300
LOGGER = "/usr/bin/logger"


def addresses(server: Server, message: str) -> list[tuple[str, int]]:
    found = []
    for line in server.logs:
        if message in line:
            address = orjson.loads(line)["address"].split("://", 1)[1]
            host, port = address.rsplit(":", 1)
            found.append((host, int(port)))
    return found


def all_rows(server: Server, dataset: str = "syslog") -> list[dict[str, Any]]:
    return server.query("*", dataset=dataset, limit=100_000)["rows"]


def syslog_server(server_factory: Any) -> tuple[Server, tuple[str, int], tuple[str, int]]:
    server = server_factory(HELIOS_SYSLOG_LISTEN="tcp://127.0.0.1:0,udp://127.0.0.1:0")
    (tcp,) = addresses(server, "syslog TCP listener started")
    (udp,) = addresses(server, "syslog UDP listener started")
    return server, tcp, udp


@pytest.mark.skipif(not os.path.exists(LOGGER), reason="util-linux logger is not installed")
def test_logger_over_tcp_rfc5424_and_udp_rfc3164(server_factory: Any) -> None:
    server, tcp, udp = syslog_server(server_factory)
    lines = "".join(f"payment {i} captured\n" for i in range(ROWS)).encode()
    subprocess.run([LOGGER, "--tcp", "--rfc5424", "-n", tcp[0], "-P", str(tcp[1]), "-t", "billing", "--id=4242",
                    "--msgid", "PAY", "-p", "local3.warning", "--sd-id", "order@32473",
                    "--sd-param", 'id="x\\"1"', "--sd-param", 'region="eu"'], input=lines, check=True, timeout=60)
    wait_until(lambda: len(all_rows(server)) >= ROWS, what="the TCP messages")
    rows = {r["_msg"]: r for r in all_rows(server)}
    assert len(all_rows(server)) == ROWS and set(rows) == {f"payment {i} captured" for i in range(ROWS)}
    row = rows["payment 7 captured"]
    assert (row["app_name"], row["procid"], row["msgid"]) == ("billing", "4242", "PAY")
    assert (row["facility"], row["severity"], row["level"]) == ("local3", "warning", "WARN")
    assert row["sd.order@32473.id"] == 'x"1' and row["sd.order@32473.region"] == "eu"
    assert row["hostname"] and "parse_error" not in row
    assert server.count('"sd.order@32473.region":eu level:WARN', dataset="syslog") == ROWS

    # UDP has no flow control: send in bursts a socket buffer holds, each after the last has arrived.
    for start in range(0, ROWS, 50):
        lines = "".join(f"disk {i} almost full\n" for i in range(start, start + 50)).encode()
        subprocess.run([LOGGER, "--udp", "--rfc3164", "-n", udp[0], "-P", str(udp[1]), "-t", "smartd",
                        "-p", "daemon.err"], input=lines, check=True, timeout=60)
        wait_until(lambda: server.count("app_name:smartd", dataset="syslog") >= start + 50, what="UDP messages")
    rows = {r["_msg"]: r for r in all_rows(server) if r.get("app_name") == "smartd"}
    assert len(rows) == ROWS and set(rows) == {f"disk {i} almost full" for i in range(ROWS)}
    row = rows["disk 3 almost full"]
    assert (row["facility"], row["severity"], row["level"]) == ("daemon", "err", "ERROR")
    assert row["hostname"] and "parse_error" not in row
    assert len(all_rows(server)) == 2 * ROWS
    metrics = server.request("GET", "/metrics").text
    assert f'helios_compat_rows_total{{protocol="syslog"}} {2 * ROWS}' in metrics


def test_oversized_and_malformed_messages(server_factory: Any) -> None:
    server, tcp, udp = syslog_server(server_factory)
    pid = server.proc.pid
    with socket.create_connection(tcp) as conn:
        conn.sendall(b"<14>1 2023-11-14T22:13:20.5Z web1 app - - - before\n")
        conn.sendall(b"<14>1 2023-11-14T22:13:20Z web1 app - - - " + b"x" * (1 << 20) + b"\n")  # 1 MB line
        conn.sendall(b"<14>1 2023-11-14T22:13:21Z web1 app - - - after the long line\n")
        frame = b"<14>1 2023-11-14T22:13:22Z web1 app - - - " + b"y" * (1 << 20)
        conn.sendall(str(len(frame)).encode() + b" " + frame)  # a 1 MB octet-counted frame
        good = b"<14>1 2023-11-14T22:13:23Z web1 app - - - \xef\xbb\xbfafter the long frame"
        conn.sendall(str(len(good)).encode() + b" " + good)
        conn.sendall(b"no header at all\n<999>bad pri\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"<11>1 2023-13-45T99:00:00Z h a - - - bad timestamp", udp)
    wait_until(lambda: len(all_rows(server)) >= 6, what="the good and malformed messages")
    rows = {r["_msg"]: r for r in all_rows(server)}
    assert set(rows) == {"before", "after the long line", "after the long frame", "no header at all", "<999>bad pri",
                         "<11>1 2023-13-45T99:00:00Z h a - - - bad timestamp"}
    assert rows["before"]["_time"] == "2023-11-14T22:13:20.500000000Z"
    assert "PRI" in rows["no header at all"]["parse_error"]
    assert "timestamp" in rows["<11>1 2023-13-45T99:00:00Z h a - - - bad timestamp"]["parse_error"]
    assert server.proc.poll() is None and server.proc.pid == pid
    metrics = server.request("GET", "/metrics").text
    assert 'helios_compat_dropped_total{protocol="syslog",reason="too_long"} 2' in metrics
    assert any("dropped" in line and "too_long" in line for line in server.logs)


def test_parse_and_framing_rules() -> None:
    row = parse_message(b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 '
                        b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
                        b'[examplePriority@32473 class="high\\]"] \xef\xbb\xbfAn application event')
    assert row == {"facility": "local4", "severity": "notice", "level": "INFO", "_time": 1065910455003000000,
                   "hostname": "mymachine.example.com", "app_name": "evntslog", "msgid": "ID47",
                   "sd.exampleSDID@32473.iut": "3", "sd.exampleSDID@32473.eventSource": "Application",
                   "sd.exampleSDID@32473.eventID": "1011", "sd.examplePriority@32473.class": "high]",
                   "_msg": "An application event"}
    row = parse_message(b"<34>Oct 11 22:14:15 mymachine su[77]: 'su root' failed on /dev/pts/8")
    assert (row["hostname"], row["app_name"], row["procid"]) == ("mymachine", "su", "77")
    assert row["_msg"] == "'su root' failed on /dev/pts/8" and row["severity"] == "crit"
    assert parse_message(b"<13>Oct 11 22:14:15 cron: no host")["app_name"] == "cron"
    assert parse_message(b"<13>1 - - - - - [bad sd")["parse_error"].startswith("RFC 5424")
    assert parse_message(b"<13>1 - - - - - -")["_msg"] == ""

    framer = Framer(max_bytes=10)
    assert framer.feed(b"3 abc5 de") == ([b"abc"], 0)
    assert framer.feed(b"fgh\nxyz\n") == ([b"defgh", b"xyz"], 0)
    assert framer.feed(b"<1>" + b"z" * 20) == ([], 1)
    assert framer.feed(b"zz\n<1>ok\n99 " + b"q" * 50) == ([b"<1>ok"], 1)
    assert framer.feed(b"q" * 49 + b"2 hi") == ([b"hi"], 0)


def test_graceful_stop_with_listeners_and_restart(server_factory: Any) -> None:
    server = server_factory(HELIOS_SYSLOG_LISTEN="tcp://127.0.0.1:0", HELIOS_FORWARD_LISTEN="127.0.0.1:0")
    (tcp,) = addresses(server, "syslog TCP listener started")
    with socket.create_connection(tcp) as conn:
        conn.sendall(b"".join(b"<14>1 - h app - - - line %d\n" % i for i in range(100)))
    wait_until(lambda: 'helios_compat_rows_total{protocol="syslog"} 100' in server.request("GET", "/metrics").text,
               what="100 rows stored")
    assert server.stop() == 0  # listeners stopped and their sink drained before the last flush
    server.start()
    assert len(all_rows(server)) == 100
    assert len(addresses(server, "syslog TCP listener started")) == 1
