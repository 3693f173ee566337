"""A moto S3 server for the tests, on a loopback port printed as JSON on stdout.

moto 5.2.5 checks a conditional PUT's precondition and then writes, with no
lock: two racing writers can both win. Real S3 lets exactly one win. This
test server serialises PUTs per key (a lock inside the server process) so
that it behaves like S3; ``--unpatched`` leaves moto as it is. The product
code is never changed for moto.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading


def make_put_atomic() -> None:
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    guard = threading.Lock()
    locks: dict[tuple[str, str], threading.Lock] = {}

    def put_object(self):  # type: ignore[no-untyped-def]
        key = (self.bucket_name, self.parse_key_name())
        with guard:
            lock = locks.setdefault(key, threading.Lock())
        with lock:
            return original(self)

    S3Response.put_object = put_object


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--unpatched", action="store_true")
    args = parser.parse_args()
    if not args.unpatched:
        make_put_atomic()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(json.dumps({"endpoint": f"http://{host}:{port}", "patched": not args.unpatched}), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
