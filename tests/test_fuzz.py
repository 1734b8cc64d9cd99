"""The fuzz targets (fuzz/) run clean for a short deterministic run; every parser has one; every target has seeds.

Each target runs in a process of its own, as under ``make fuzz``: a fixed libFuzzer
seed, a fixed number of inputs and a fixed ``PYTHONHASHSEED`` make the same inputs
every time, so a failure here reproduces with the command it prints. All of them
together take about 20 s on two cores.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path

import pytest

from fuzz import CORPUS, TARGETS
from fuzz.run import ROOT, worker_command, worker_environment

RUNS = 3000
SEED = 1
#: Every function that reads what a client sends, by dotted name: each must be some target's.
PARSERS = (
    "imgedit.api.multipart.read_multipart",
    "imgedit.api.body.read_json",
    "imgedit.api.parse.parse_edit_request",
    "imgedit.api.lora.parse_lora",
    "imgedit.media.fetch.Fetcher.read",
    "imgedit.media.images.decode_image",
    "imgedit.media.masking.decode_mask",
    "imgedit.media.sizing.parse_size",
    "imgedit.media.sizing.output_size",
    "imgedit.api.routes._admin_body",
    "imgedit.serving.presets.parse_presets",
    "imgedit.api.headers.prefers_async",
    "imgedit.api.headers.idempotency_key",
    "imgedit.durable.images.DirectoryStore.open",
    "imgedit.durable.jobs.JobTable.get",
    "imgedit.serving.routing.ModelRouter.pick",
)


@pytest.mark.parametrize("target", TARGETS)
def test_the_target_runs_clean(target, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    command = worker_command(target, tmp_path, [f"-runs={RUNS}", f"-seed={SEED}"], scratch, CORPUS / target)
    environment = worker_environment(tmp_path, skip=[], hash_seed="0")
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    if finished.returncode != 0:
        saved = [path for path in sorted(tmp_path.iterdir()) if path.is_file() and path.suffix != ".txt"]
        notes = [path.with_name(path.name + ".txt") for path in saved]
        found = "\n".join(
            f"input {path.name}: {path.read_bytes()[:300]!r}\n{note.read_text() if note.is_file() else ''}"
            for path, note in zip(saved, notes, strict=True)
        )
        pytest.fail(
            f"{target} crashed (PYTHONHASHSEED=0 .venv/bin/python -m fuzz --target {target} --runs {RUNS} "
            f"--seed {SEED} reproduces it):\n{found or finished.stderr[-3000:]}"
        )
    assert f"Done {RUNS} runs" in finished.stderr, finished.stderr[-2000:]


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_has_seeds(target):
    seeds = [path for path in (CORPUS / target).iterdir() if path.is_file()]
    assert seeds and all(path.stat().st_size > 0 for path in seeds)


def test_the_dictionaries_are_current():
    from fuzz import dictionaries

    assert sorted(dictionaries.TOKENS) == sorted(TARGETS)
    for target, tokens in dictionaries.TOKENS.items():
        assert dictionaries.path(target).read_text() == dictionaries.render(tokens), "run python -m fuzz.seeds"


def test_the_corpus_is_small():
    assert sum(path.stat().st_size for path in CORPUS.rglob("*") if path.is_file()) < 300 * 1024


def test_every_parser_is_fuzzed():
    driven: dict[str, str] = {}
    for target in TARGETS:
        module = importlib.import_module(f"fuzz.targets.{target}")
        source = Path(module.__file__).read_text()
        for name in module.DRIVES:
            assert _resolves(name), f"{target} names {name}, which does not exist"
            assert name.rsplit(".", 1)[1] in source, f"{target} names {name} but never calls it"
            driven[name] = target
    assert sorted(set(PARSERS) - set(driven)) == []


def test_the_fuzzed_body_limits_are_the_servers():
    from fuzz.limits import body_limits
    from imgedit.config import Settings
    from imgedit.serving.options import multipart_limits

    fuzzed, served = body_limits(), multipart_limits(Settings.model_construct())
    for name in ("image", "image[]", "mask", "url", "url[]", "prompt", "lora", "anything"):
        assert fuzzed.part_bytes(name) == served.part_bytes(name), name
    assert (fuzzed.max_body_bytes, fuzzed.max_parts) == (served.max_body_bytes, served.max_parts)
    assert (fuzzed.idle_seconds, fuzzed.total_seconds) == (served.idle_seconds, served.total_seconds)


def test_a_crash_is_named_by_its_kind_not_its_data():
    from fuzz.outcome import BrokenPromise, signature

    def overflow(value):
        return float(value)

    with pytest.raises(OverflowError) as raised:
        overflow(10**400)
    assert signature(raised.value) == f"OverflowError at {__name__}:overflow"
    assert signature(BrokenPromise("a promise", "what was seen")) == "BrokenPromise: a promise"


def test_the_runner_runs_a_target_and_reports_it(tmp_path, monkeypatch, capsys):
    from fuzz import run

    monkeypatch.setattr(run, "CRASHES", tmp_path)
    monkeypatch.setitem(os.environ, "PYTHONHASHSEED", "0")
    assert run.main(["--target", "admin", "--runs", "50", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("admin: 50 runs in ")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            value: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return callable(value)
    return False
