"""Run the fuzz targets: ``python -m fuzz [--seconds TOTAL] [--target NAME]... [--runs N --seed S] [--grow]``.

Each target runs in a process of its own (``python -m fuzz.worker``), since
libFuzzer ends the process it runs in. New inputs it finds go to a scratch
folder beside the committed seeds of ``fuzz/corpus/TARGET``, which stay as they
are unless ``--grow`` merges what added coverage into them.

* Timed (the default): ``--seconds`` split evenly over the targets. After a
  crash the target goes on for the rest of its time with that kind of crash
  passed over (``--stop-on-crash`` stops it instead), so one bug does not hide
  the next.
* Deterministic: ``--runs N --seed S`` runs each target exactly N inputs from a
  fixed seed, with a fixed ``PYTHONHASHSEED``, and stops at the first crash.

A crashing input is saved as ``fuzz/crashes/TARGET/crash-SHA1`` (timeouts and
memory blow-ups as ``timeout-``/``oom-``), its signature and traceback beside
it in ``crash-SHA1.txt``; the exit status is 1 when any target crashed. Options
the runner does not know (``-max_len=65536``...) go to libFuzzer.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import CORPUS, CRASHES, DICTS, HERE, TARGETS

ROOT = HERE.parent
#: libFuzzer's names for what it saves: a crash (an exception), a slow input, memory past the limit.
ARTIFACT_KINDS = ("crash-", "timeout-", "oom-", "leak-")
#: Per input: longer than this is a hang (libFuzzer's -timeout), more memory than this a blow-up.
INPUT_TIMEOUT_S = 25
RSS_LIMIT_MB = 2048
#: A target restarted more often than this within its time gives up (every crash costs a restart).
MAX_RESTARTS = 25


@dataclass(frozen=True)
class Crash:
    """A saved crashing input and what kind of crash it is."""

    target: str
    path: Path
    signature: str

    @property
    def notes(self) -> Path:
        return self.path.with_name(self.path.name + ".txt")


@dataclass
class Outcome:
    """How one target's run went."""

    target: str
    seconds: float = 0.0
    runs: int = 0
    crashes: list[Crash] = field(default_factory=list)
    failure: str | None = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="total time, split over the targets (600)")
    parser.add_argument("--target", action="append", choices=TARGETS, help="run only this target (repeatable)")
    parser.add_argument("--runs", type=int, help="deterministic: this many inputs per target")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed (deterministic mode: default 1)")
    parser.add_argument("--grow", action="store_true", help="merge new inputs that add coverage into fuzz/corpus")
    parser.add_argument("--stop-on-crash", action="store_true", help="stop a target at its first crash")
    args, extra = parser.parse_known_args(argv)
    unknown = [option for option in extra if not (option.startswith("-") and "=" in option)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    targets = tuple(dict.fromkeys(args.target or TARGETS))
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="imgedit-fuzz-") as work:
        for target in targets:
            scratch = Path(work) / target
            scratch.mkdir()
            if args.runs is not None:
                outcome = fuzz_deterministic(target, scratch, args.runs, args.seed or 1, extra)
            else:
                budget = args.seconds / len(targets)
                outcome = fuzz_timed(target, scratch, budget, args.seed, extra, keep_going=not args.stop_on_crash)
            if args.grow and outcome.failure is None:
                grow(target, scratch, [crash.signature for crash in outcome.crashes])
            report(outcome)
            outcomes.append(outcome)
    failed = [outcome for outcome in outcomes if outcome.crashes or outcome.failure]
    if failed:
        print(f"\nFAILED: {', '.join(outcome.target for outcome in failed)}", flush=True)
    return 1 if failed else 0


def fuzz_deterministic(target: str, scratch: Path, runs: int, seed: int, extra: list[str]) -> Outcome:
    """``runs`` inputs from ``seed``: the same inputs, in the same order, every time."""
    outcome = Outcome(target)
    _run_worker(target, [f"-runs={runs}", f"-seed={seed}", *extra], scratch, outcome, skip=[], hash_seed="0")
    return outcome


def fuzz_timed(
    target: str, scratch: Path, seconds: float, seed: int | None, extra: list[str], *, keep_going: bool
) -> Outcome:
    """``target`` for ``seconds``, restarted past each new kind of crash when ``keep_going``."""
    outcome = Outcome(target)
    deadline = time.monotonic() + seconds
    skip: list[str] = []
    for _ in range(MAX_RESTARTS):
        remaining = int(deadline - time.monotonic())
        if remaining < 1:
            break
        options = [f"-max_total_time={remaining}", *([f"-seed={seed}"] if seed is not None else []), *extra]
        found = _run_worker(target, options, scratch, outcome, skip)
        # A timeout or a memory blow-up has no signature to pass over: it would only come back.
        if not found or outcome.failure or not keep_going or not found.notes.is_file():
            break
        skip.append(found.signature)
    return outcome


def _run_worker(
    target: str, options: list[str], scratch: Path, outcome: Outcome, skip: list[str], hash_seed: str | None = None
) -> Crash | None:
    """One worker process; its time, runs and crash (if any) go into ``outcome``."""
    crashes = CRASHES / target
    crashes.mkdir(parents=True, exist_ok=True)
    command = worker_command(target, crashes, options, scratch, CORPUS / target)
    log = scratch.parent / f"{target}.log"
    before = _inputs(crashes)
    started = time.monotonic()
    with log.open("ab") as output:
        environment = worker_environment(crashes, skip, hash_seed)
        finished = subprocess.run(command, cwd=ROOT, env=environment, stdout=output, stderr=output, check=False)
    outcome.seconds += time.monotonic() - started
    text = log.read_text(errors="replace")
    outcome.runs += _runs(text)
    log.unlink()
    # libFuzzer names what it saved (an input found before is saved again, under the same name);
    # should it die first, the worker has saved the input itself.
    saved = [Path(path) for path in re.findall(r"Test unit written to (\S+)", text)]
    saved += sorted(path for path, stamp in _inputs(crashes).items() if before.get(path) != stamp)
    if saved and saved[0].name.startswith(ARTIFACT_KINDS):
        path = saved[0]
        notes = path.with_name(path.name + ".txt")
        kind = notes.read_text().split("\n", 1)[0] if notes.is_file() else path.name.split("-")[0]
        crash = Crash(target, path, kind)
        outcome.crashes.append(crash)
        return crash
    if finished.returncode != 0:
        tail = "\n".join(text.splitlines()[-30:])
        outcome.failure = f"the worker exited with status {finished.returncode} and saved no input:\n{tail}"
    return None


def grow(target: str, scratch: Path, skip: list[str]) -> None:
    """Merge the inputs of ``scratch`` that add coverage into the committed corpus of ``target``."""
    command = worker_command(target, CRASHES / target, ["-merge=1"], CORPUS / target, scratch)
    subprocess.run(command, cwd=ROOT, env=worker_environment(CRASHES / target, skip), capture_output=True, check=False)


def report(outcome: Outcome) -> None:
    """One line per target, and where each crash's input and traceback are."""
    verdict = "FAILED to run" if outcome.failure else f"{len(outcome.crashes)} crash(es)" if outcome.crashes else "ok"
    print(f"{outcome.target}: {outcome.runs} runs in {outcome.seconds:.1f} s, {verdict}", flush=True)
    for crash in outcome.crashes:
        print(f"  {crash.signature}\n    input: {crash.path}", flush=True)
        if crash.notes.is_file():
            print(f"    traceback: {crash.notes}", flush=True)
    if outcome.failure:
        print(f"  {outcome.failure}", flush=True)


def worker_command(target: str, crashes: Path, options: list[str], *folders: Path) -> list[str]:
    """The command line of a worker for ``target``: crashes saved under ``crashes``, inputs read from ``folders``.

    libFuzzer writes the new inputs it finds into the first folder and only reads the others; the
    target's dictionary (``fuzz/dicts``) goes with it.
    """
    limits = [f"-artifact_prefix={crashes}/", f"-timeout={INPUT_TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}"]
    dictionary = [f"-dict={DICTS / target}.dict"] if (DICTS / f"{target}.dict").is_file() else []
    return [sys.executable, "-m", "fuzz.worker", target, *limits, *dictionary, *options, *map(str, folders)]


def worker_environment(crashes: Path, skip: list[str], hash_seed: str | None = None) -> dict[str, str]:
    """The worker's variables: see :mod:`fuzz.worker`; a fixed hash seed keeps set and dict orders the same."""
    environment = dict(os.environ, FUZZ_NOTES=str(crashes), FUZZ_SKIP="\n".join(skip))
    if hash_seed is not None:
        environment["PYTHONHASHSEED"] = hash_seed
    environment.setdefault("PYTHONHASHSEED", "0")
    return environment


def _inputs(crashes: Path) -> dict[Path, int]:
    """The crashing inputs saved under ``crashes``, with the time each was last written."""
    return {path: path.stat().st_mtime_ns for path in crashes.glob("crash-*") if path.suffix != ".txt"}


def _runs(log: str) -> int:
    """How many inputs libFuzzer ran, from its ``Done N runs`` line (or its last status line)."""
    for line in reversed(log.splitlines()):
        if line.startswith("Done ") and " runs " in line:
            return int(line.split()[1])
        if line.startswith("#") and line[1:].split("\t")[0].isdigit():
            return int(line[1:].split("\t")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
