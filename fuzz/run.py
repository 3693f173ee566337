"""``make fuzz``: run seeded schedules on memory, fs and S3 (moto) for FUZZ_SECONDS; replay one seed.

    .venv/bin/python fuzz/run.py run [--seconds 60] [--backends memory,fs,s3] [--bug NAME] [--schedules N]
    .venv/bin/python fuzz/run.py replay --backend memory --seed 123 [--bug NAME]

``--bug`` plants one of ``fuzz.planted.BUGS`` (default: $FUZZ_BUG, so
``FUZZ_BUG=racy-create make fuzz`` must fail). Ends with one summary line, e.g.
``fuzz: memory 900 schedules/30000 ops/5400 checks/..., fs 60 ..., s3 12 ..., 0 violations``;
each violation prints its seed, the invariant it broke, the seconds into that
backend's share it was found, and the command that replays it. Exit status 1
on any violation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the fuzz harness and the moto test server

from fuzz.sim import BUGS, Result, run_schedule  # noqa: E402
from helios import log  # noqa: E402

SHARES = {"memory": 0.4, "fs": 0.3, "s3": 0.3}


def _moto() -> tuple[object, dict[str, str]]:
    from support import S3_ENV, MotoServer

    server = MotoServer().start()
    server.client().create_bucket(Bucket="helios-test")
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": server.endpoint}
    os.environ.update(env)  # botocore's credential chain reads the process environment
    return server, env


def run(seconds: float, backends: list[str], bug: str | None, first_seed: int,
        max_schedules: int | None = None) -> list[Result]:
    results: list[Result] = []
    moto, s3_env = (None, None)
    if "s3" in backends:
        moto, s3_env = _moto()
    try:
        total = sum(SHARES[b] for b in backends)
        for backend in backends:
            started = time.monotonic()
            deadline = started + seconds * SHARES[backend] / total
            seed = first_seed
            while time.monotonic() < deadline and (max_schedules is None or seed - first_seed < max_schedules):
                result = run_schedule(backend, seed, bug=bug, s3_env=s3_env)
                results.append(result)
                if result.violation:
                    print(f"fuzz: VIOLATION on {backend} seed {seed}: {result.violation}\n"
                          f"  invariant: {result.invariant}; found {time.monotonic() - started:.1f} s into "
                          f"the {backend} run\n"
                          f"  replay: {result.replay_command()}", file=sys.stderr)
                seed += 1
    finally:
        if moto is not None:
            moto.stop()  # type: ignore[attr-defined]
    return results


def summary(results: list[Result], backends: list[str]) -> str:
    parts = []
    for backend in backends:
        mine = [r for r in results if r.backend == backend]
        parts.append(f"{backend} {len(mine)} schedules/{sum(r.ops for r in mine)} ops/"
                     f"{sum(r.checks for r in mine)} checks/{sum(r.faults for r in mine)} faults/"
                     f"{sum(r.crashes for r in mine)} crashes/{sum(r.lockstep_steps for r in mine)} lockstep steps/"
                     f"{sum(r.same_key for r in mine)} same-key races/"
                     f"{sum(1 for r in mine if r.violation)} violations")
    violations = sum(1 for r in results if r.violation)
    return f"fuzz: {', '.join(parts)}, {violations} violations"


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Set iteration order depends on string hashing: fix it, so a seed replays exactly.
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)],
                  {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(prog="fuzz/run.py")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run")
    run_p.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "60")))
    run_p.add_argument("--backends", default="memory,fs,s3")
    run_p.add_argument("--bug", choices=BUGS, default=os.environ.get("FUZZ_BUG") or None)
    run_p.add_argument("--first-seed", type=int, default=int(os.environ.get("FUZZ_FIRST_SEED", "1")))
    run_p.add_argument("--schedules", type=int, help="at most this many schedules per backend")
    replay_p = sub.add_parser("replay")
    replay_p.add_argument("--backend", choices=("memory", "fs", "s3"), required=True)
    replay_p.add_argument("--seed", type=int, required=True)
    replay_p.add_argument("--bug", choices=BUGS)
    replay_p.add_argument("--trace", action="store_true", help="print every step")
    args = parser.parse_args(argv)
    if args.bug is not None and args.bug not in BUGS:
        parser.error(f"FUZZ_BUG={args.bug!r}: one of {', '.join(BUGS)}")
    log.configure("critical")
    if args.command == "replay":
        moto, s3_env = _moto() if args.backend == "s3" else (None, None)
        try:
            result = run_schedule(args.backend, args.seed, bug=args.bug, s3_env=s3_env)
        finally:
            if moto is not None:
                moto.stop()  # type: ignore[attr-defined]
        if args.trace:
            print("\n".join(result.trace))
        print(f"fuzz: {args.backend} seed {args.seed}: {result.ops} ops, {result.checks} checks, "
              f"{result.same_key} same-key races, trace {result.digest}: {result.violation or 'ok'}")
        return 1 if result.violation else 0
    backends = [b for b in args.backends.split(",") if b]
    results = run(args.seconds, backends, args.bug, args.first_seed, args.schedules)
    print(summary(results, backends))
    return 1 if any(r.violation for r in results) else 0


if __name__ == "__main__":
    code = main()
    # Out without the interpreter's teardown: Arrow's thread pools can abort the process there
    # ("terminate called without an active exception", SIGABRT; apache/arrow#34314), which once
    # turned a run's exit status 1 (violations found) into -6 under a loaded CI machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
