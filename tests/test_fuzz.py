"""The protocol fuzzer: a short run on every backend finds nothing; each planted bug is caught; replays are exact."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import MotoServer, S3_ENV

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the fuzz harness lives at the repo root, beside helios/ and backends/

from fuzz.sim import CAUGHT_BY, Result, run_schedule  # noqa: E402

SEEDS_TO_CATCH = 20
# Each planted bug, on the backends it is tried on here: ``racy-create`` is a check-then-store inside
# the backend's own create with no added delay, so it is tried on memory and on fs (real threads);
# ``racy-create-in-thread`` differs from it on fs only.
CONTROLS = [("non-atomic-cas", "memory"), ("racy-create", "memory"), ("racy-create", "fs"),
            ("racy-create-in-thread", "fs"), ("lost-append", "memory"), ("ignore-epoch", "memory")]


def _run_for(backend: str, seconds: float, *, at_least: int = 3, **kwargs: object) -> list[Result]:
    """Schedules from seed 1 on for ``seconds``, and at least ``at_least`` of them on a slow machine."""
    results, seed, deadline = [], 1, time.monotonic() + seconds
    while time.monotonic() < deadline or len(results) < at_least:
        results.append(run_schedule(backend, seed, **kwargs))  # type: ignore[arg-type]
        seed += 1
    return results


def test_short_run_on_memory_and_fs_finds_no_violation() -> None:
    for backend, seconds in (("memory", 7.0), ("fs", 6.0)):
        results = _run_for(backend, seconds)
        bad = [(r.seed, r.violation, r.replay_command()) for r in results if r.violation]
        assert not bad, bad
        assert sum(r.checks for r in results) > 0 and sum(r.crashes for r in results) > 0
        # The harness itself: lockstep steps did release several creates of one key together.
        assert sum(r.same_key for r in results) > 0, "no same-key contention was driven"
        print(f"{backend}: {len(results)} schedules, {sum(r.ops for r in results)} ops, "
              f"{sum(r.same_key for r in results)} same-key races")


def test_short_run_on_s3_finds_no_violation(moto_s3: MotoServer, s3_env: dict[str, str]) -> None:
    env = {**S3_ENV, "AWS_ENDPOINT_URL_S3": moto_s3.endpoint}
    results = _run_for("s3", 6.0, at_least=1, s3_env=env)
    bad = [(r.seed, r.violation) for r in results if r.violation]
    assert not bad, bad
    print(f"s3: {len(results)} schedules, {sum(r.ops for r in results)} ops")


def _first_caught(bug: str, backend: str = "memory") -> Result:
    for seed in range(1, SEEDS_TO_CATCH + 1):
        result = run_schedule(backend, seed, bug=bug)
        if result.violation:
            return result
    raise AssertionError(f"the fuzzer did not catch the planted bug {bug!r} on {backend} in {SEEDS_TO_CATCH} seeds")


@pytest.mark.parametrize(("bug", "backend"), CONTROLS)
def test_planted_bugs_are_caught(bug: str, backend: str) -> None:
    """Each planted bug is caught, and by the invariant it breaks (not by any violation at all)."""
    result = _first_caught(bug, backend)
    assert result.invariant == CAUGHT_BY[bug], (result.seed, result.violation)
    print(f"{bug} on {backend}: caught at seed {result.seed}: {result.violation}")


def test_every_planted_bug_has_a_control() -> None:
    assert {bug for bug, _ in CONTROLS} == set(CAUGHT_BY)


def test_a_replay_reproduces_a_failing_seed_exactly() -> None:
    """``fuzz/run.py run`` reports each violation with its replay command; the command, run alone,
    repeats it step for step — also for a seed that ran after others in the run's process (nothing
    may carry over between schedules, e.g. wake-up orders by object address)."""
    found = subprocess.run([sys.executable, "fuzz/run.py", "run", "--backends", "memory", "--seconds", "600",
                            "--schedules", "2", "--bug", "lost-append", "--first-seed", "1"],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert found.returncode == 1 and "memory 2 schedules" in found.stdout, found.stdout + found.stderr
    reports = found.stderr.split("fuzz: VIOLATION on ")[1:]
    assert reports and not reports[-1].startswith("memory seed 1:"), found.stderr
    last = reports[-1]  # found after at least one other schedule ran in that process
    violation = last.split(": ", 1)[1].split("\n")[0]
    command = last.split("replay: ", 1)[1].split()
    assert command[:2] == [".venv/bin/python", "fuzz/run.py"]
    outputs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, *command[1:], "--trace"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 1, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1], "two replays of one seed took different steps"
    assert violation in outputs[0].splitlines()[-2], (violation, outputs[0].splitlines()[-2:])

