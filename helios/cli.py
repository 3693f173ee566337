"""The ``helios`` command: serve, ingest, query, tail, user, token, version."""

from __future__ import annotations

import argparse
import getpass
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import orjson

from helios import __version__
from helios.errors import ConfigError

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:7300"
ROLE_CHOICES = ("admin", "editor", "viewer", "ingest")


def _build_commit() -> str:
    try:
        import helios_build_info  # type: ignore[import-not-found]  # only in the binary (pyinstaller.spec)

        return str(helios_build_info.COMMIT)
    except ImportError:
        pass
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cmd_serve(args: argparse.Namespace) -> int:
    # Arrow's C++ code (Parquet's writer, IPC, kernels) allocates from its default pool, which is
    # chosen once, from this variable, before pyarrow is imported: mimalloc unless told. mimalloc
    # hands freed pages back and faults them in again as zeroed huge pages (4 % of an
    # ingesting node's CPU even with pyarrow's own default set to jemalloc, node._use_jemalloc).
    # An explicit value wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    import trio

    from helios import config as config_mod
    from helios import log
    from helios.node import serve

    try:
        cfg = config_mod.load(args)
        log.configure(cfg.log_level)
        trio.run(serve, cfg)
    except ConfigError as exc:
        print(f"helios: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # a background task (e.g. the control-plane sync) refused to go on
        found = group.subgroup(ConfigError)
        if found is None:
            raise
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        print(f"helios: {found}", file=sys.stderr)
        return 2
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from helios.ingest import flat
    print(f"helios {__version__} (commit {_build_commit()})")
    from helios.storage import crc32c
    print("ingest: the C reader of flat NDJSON (helios.ingest._flatjson)" if flat.AVAILABLE
          else "ingest: pyarrow.json only (the C reader was not built: no C compiler at install)")
    print(("wal: CRC-32C frames (helios.storage._crc32c, "
           + ("the CPU's crc32 instruction)" if crc32c.HARDWARE else "tables)")) if crc32c.NATIVE
          else "wal: zlib CRC-32 frames (the CRC-32C extension was not built: no C compiler at install)")
    return 0


# -- client commands ---------------------------------------------------------


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("HELIOS_URL", DEFAULT_URL),
                        help=f"node URL [env HELIOS_URL, default {DEFAULT_URL}]")
    parser.add_argument("--token", default=os.environ.get("HELIOS_TOKEN"),
                        help="API token or JWT [env HELIOS_TOKEN]")
    parser.add_argument("--username", default=os.environ.get("HELIOS_USERNAME", "admin"),
                        help="log in as this user when no token is given [env HELIOS_USERNAME]")
    parser.add_argument("--password", default=os.environ.get("HELIOS_PASSWORD"),
                        help="password for --username [env HELIOS_PASSWORD]")


def _client(args: argparse.Namespace) -> Any:
    import httpx

    client = httpx.Client(base_url=args.url, timeout=httpx.Timeout(60.0, connect=5.0))
    token = args.token
    if not token:
        if not args.password:
            raise SystemExit("helios: give --token (HELIOS_TOKEN) or --password (HELIOS_PASSWORD)")
        reply = client.post("/api/v1/auth/login", json={"username": args.username, "password": args.password})
        if reply.status_code != 200:
            raise SystemExit(f"helios: login failed: {_error_text(reply)}")
        token = reply.json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def _error_text(reply: Any) -> str:
    try:
        return f"{reply.status_code} {reply.json().get('error')}"
    except ValueError:
        return f"{reply.status_code} {reply.text[:200]}"


def _batches(stream: BinaryIO, size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in stream:
        if line.strip():
            batch.append(line.rstrip(b"\r\n"))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def cmd_ingest(args: argparse.Namespace) -> int:
    client = _client(args)
    total, began = 0, time.monotonic()
    for name in args.files or ["-"]:
        stream = sys.stdin.buffer if name == "-" else open(name, "rb")
        size = None if name == "-" else os.path.getsize(name)
        done_bytes = 0
        with stream:
            for batch in _batches(stream, args.batch):
                fmt = args.format
                if fmt == "auto":
                    fmt = "ndjson" if batch[0].lstrip().startswith(b"{") else "text"
                body = b"\n".join(batch) + b"\n"
                kind = "application/x-ndjson" if fmt == "ndjson" else "text/plain"
                reply = client.post("/api/v1/ingest", params={"dataset": args.dataset}, content=body,
                                    headers={"Content-Type": kind})
                if reply.status_code != 200:
                    print(f"\nhelios: ingest failed: {_error_text(reply)}", file=sys.stderr)
                    return 1
                total += reply.json()["ingested"]
                done_bytes = stream.tell() if size else done_bytes + len(body)
                rate = total / max(time.monotonic() - began, 1e-9)
                share = f" {min(100.0, 100.0 * done_bytes / size):5.1f}%" if size else ""
                print(f"\r{name}:{share} {total:,} rows, {rate:,.0f} rows/s", end="", file=sys.stderr)
        print(file=sys.stderr)
    print(orjson.dumps({"ingested": total}).decode())
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    client = _client(args)
    doc: dict[str, Any] = {"q": args.q, "limit": args.limit}
    if args.dataset:
        doc["dataset"] = args.dataset.split(",") if "," in args.dataset else args.dataset
    for key in ("from", "to"):
        value = getattr(args, key + "_")
        if value:
            doc[key] = value
    reply = client.post("/api/v1/query", json=doc)
    if reply.status_code != 200:
        print(f"helios: query failed: {_error_text(reply)}", file=sys.stderr)
        return 1
    result = reply.json()
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    _print_table(result["rows"])
    stats = result["stats"]
    print(f"{len(result['rows'])} rows; scanned {stats['rows_scanned']:,} rows in "
          f"{stats['blocks_scanned']} blocks ({stats['blocks_pruned']} pruned), "
          f"{stats['elapsed_ms']} ms", file=sys.stderr)
    if stats.get("partial"):
        print(f"partial answer: {stats['blocks_missing']} blocks could not be read from the shared store "
              "in time", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """``helios tail 'query'``: follow ``GET /api/v1/tail`` and print each row as it arrives (Ctrl-C ends)."""
    import httpx

    client = _client(args)
    params: dict[str, Any] = {"q": args.q}
    if args.dataset:
        params["dataset"] = args.dataset
    if args.backfill:
        params["backfill"] = args.backfill
    try:
        # Keep-alives come every 15 s: a minute of silence means the node is gone.
        with client.stream("GET", "/api/v1/tail", params=params, timeout=httpx.Timeout(60.0, connect=5.0)) as reply:
            if reply.status_code != 200:
                reply.read()
                print(f"helios: tail failed: {_error_text(reply)}", file=sys.stderr)
                return 1
            event = "message"
            for line in reply.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "dropped":
                        dropped = orjson.loads(line[6:])["dropped"]
                        print(f"helios: {dropped} rows dropped here: this reader was too slow", file=sys.stderr)
                    else:
                        print(line[6:] if args.json else _tail_line(orjson.loads(line[6:])), flush=True)
                    event = "message"
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `helios tail … | head`
        return 0
    except httpx.HTTPError as exc:
        print(f"helios: the tail ended: {exc}", file=sys.stderr)
        return 1
    print("helios: the node ended the tail (shutting down)", file=sys.stderr)
    return 0


def _tail_line(row: dict[str, Any]) -> str:
    """``<time> <dataset> <message> key=value …`` (whichever of them the row has)."""
    parts = [str(row[k]) for k in ("_time", "dataset", "_msg") if k in row]
    parts += [f"{k}={v}" for k, v in row.items() if k not in ("_time", "dataset", "_msg")]
    return " ".join(parts)


def _admin_call(client: Any, method: str, path: str, body: Any = None) -> Any:
    reply = client.request(method, path, json=body)
    if reply.status_code >= 400:
        raise SystemExit(f"helios: {method} {path} failed: {_error_text(reply)}")
    return reply.json()


def cmd_user(args: argparse.Namespace) -> int:
    """``helios user list|add|set|delete``: the /api/v1/users endpoints."""
    client = _client(args)
    if args.action == "list":
        _print_table(_admin_call(client, "GET", "/api/v1/users"))
        return 0
    if args.action == "delete":
        print(orjson.dumps(_admin_call(client, "DELETE", f"/api/v1/users/{args.name}")).decode())
        return 0
    new_password = args.new_password or (getpass.getpass(f"password for {args.name}: ")
                                         if args.action == "add" or args.ask_password else None)
    if args.action == "add":
        body: dict[str, Any] = {"username": args.name, "password": new_password, "role": args.role or "viewer"}
        print(orjson.dumps(_admin_call(client, "POST", "/api/v1/users", body)).decode())
        return 0
    current = _admin_call(client, "GET", f"/api/v1/users/{args.name}")
    body = {"version": current["version"]}
    if args.role:
        body["role"] = args.role
    if new_password:
        body["password"] = new_password
    print(orjson.dumps(_admin_call(client, "PUT", f"/api/v1/users/{args.name}", body)).decode())
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """``helios token list|create|revoke``: the /api/v1/tokens endpoints."""
    client = _client(args)
    if args.action == "list":
        _print_table(_admin_call(client, "GET", "/api/v1/tokens"))
    elif args.action == "create":
        body: dict[str, Any] = {"name": args.name, "role": args.role or "ingest"}
        if args.expires_days:
            body["expires_days"] = args.expires_days
        made = _admin_call(client, "POST", "/api/v1/tokens", body)
        print(f"token {made['id']} ({made['role']}); shown once, keep it now:", file=sys.stderr)
        print(made["token"])
    else:
        print(orjson.dumps(_admin_call(client, "DELETE", f"/api/v1/tokens/{args.name}")).decode())
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns: dict[str, None] = {}
    for row in rows[:1000]:
        columns.update(dict.fromkeys(row))
    names = list(columns)
    cells = [[_cell(row.get(name)) for name in names] for row in rows]
    widths = [max([len(name)] + [len(r[i]) for r in cells]) for i, name in enumerate(names)]
    print("  ".join(name.ljust(width) for name, width in zip(names, widths)).rstrip())
    for row in cells:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 160 else text[:157] + "..."


def build_parser() -> argparse.ArgumentParser:
    from helios.config import add_serve_arguments

    parser = argparse.ArgumentParser(prog="helios", description="HeliosLogs log management server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a node")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    version = sub.add_parser("version", help="print the version and build commit")
    version.set_defaults(func=cmd_version)
    ingest = sub.add_parser("ingest", help="ship files or stdin to a node")
    _client_arguments(ingest)
    ingest.add_argument("files", nargs="*", help="files to send ('-' or none: stdin)")
    ingest.add_argument("--dataset", default="default")
    ingest.add_argument("--format", choices=("auto", "ndjson", "text"), default="auto")
    ingest.add_argument("--batch", type=int, default=5000, help="lines per request")
    ingest.set_defaults(func=cmd_ingest)
    query = sub.add_parser("query", help="run a query and print a table or JSON")
    _client_arguments(query)
    query.add_argument("q", help="the query, e.g. 'error | stats count() as n by (service)'")
    query.add_argument("--dataset", help="a dataset or a comma-separated list (default: all)")
    query.add_argument("--from", dest="from_", help="start (RFC 3339 or ns), inclusive")
    query.add_argument("--to", dest="to_", help="end (RFC 3339 or ns), exclusive")
    query.add_argument("--limit", type=int, default=100)
    query.add_argument("--json", action="store_true", help="print the JSON response")
    query.set_defaults(func=cmd_query)
    tail = sub.add_parser("tail", help="follow matching rows live as they arrive (Ctrl-C to stop)")
    _client_arguments(tail)
    tail.add_argument("q", help="filters, optionally '| fields a, b', e.g. 'level:ERROR service:api'")
    tail.add_argument("--dataset", help="a dataset or a comma-separated list (default: all)")
    tail.add_argument("--backfill", type=int, default=0, help="first print the newest N matching rows")
    tail.add_argument("--json", action="store_true", help="print each row as its JSON")
    tail.set_defaults(func=cmd_tail)
    user = sub.add_parser("user", help="manage users (admin)")
    _client_arguments(user)
    user.add_argument("action", choices=("list", "add", "set", "delete"))
    user.add_argument("name", nargs="?", default="", help="the username (add, set, delete)")
    user.add_argument("--role", choices=ROLE_CHOICES)
    user.add_argument("--new-password", default=os.environ.get("HELIOS_NEW_PASSWORD"),
                      help="the user's password (default: asked) [env HELIOS_NEW_PASSWORD]")
    user.add_argument("--ask-password", action="store_true", help="set: ask for a new password")
    user.set_defaults(func=cmd_user)
    token = sub.add_parser("token", help="manage API tokens (admin)")
    _client_arguments(token)
    token.add_argument("action", choices=("list", "create", "revoke"))
    token.add_argument("name", nargs="?", default="", help="create: the token's name; revoke: its id")
    token.add_argument("--role", choices=ROLE_CHOICES, help="create: the token's role (default ingest)")
    token.add_argument("--expires-days", type=int, help="create: expire after this many days")
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("user", "token") and args.action not in ("list",) and not args.name:
        parser.error(f"{args.command} {args.action} needs a name")
    return int(args.func(args))
