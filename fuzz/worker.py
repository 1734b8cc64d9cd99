"""One target under libFuzzer: ``python -m fuzz.worker TARGET [libFuzzer options] [corpus folders]``.

The target's module and the packages it names in ``INSTRUMENT`` are imported
under atheris' instrumentation, so that their branches and comparisons guide
the fuzzer; libFuzzer then runs until its options say stop and ends the process
(exit 0, or non-zero with the crashing input saved under ``-artifact_prefix``).

Python's recursion limit is lowered to :data:`RECURSION_LIMIT`, so that input
nested a few hundred levels deep finds what would otherwise take a thousand:
code that fails on deep nesting fails the same way at any depth past its own
checks, and nothing imgedit accepts nests that deep.

Two variables, set by :mod:`fuzz.run`, shape what a crash does:

* ``FUZZ_SKIP``: crash signatures (:func:`fuzz.outcome.signature`), one a line,
  to pass over as if the input had been refused: bugs already found, so that the
  fuzzer can look for the next;
* ``FUZZ_NOTES``: a folder where, before a crash ends the process, the input is
  saved as ``crash-SHA1`` (libFuzzer's own name for it, so that it is there even
  when libFuzzer dies before saving it) and its signature and traceback as
  ``crash-SHA1.txt``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import os
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import atheris

from fuzz import TARGETS

#: Python's is 1000; every frame of the worker and of the code under test fits well within this.
RECURSION_LIMIT = 300


def load(target: str) -> Callable[[bytes], None]:
    """``target``'s ``fuzz_one``, its module and packages instrumented, wrapped to note and skip crashes."""
    module_name = f"fuzz.targets.{target}"
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin is not None, module_name
    # The packages are only known from the module's source; read it without importing it uninstrumented.
    instrument = _declared_packages(Path(spec.origin))
    # str.startswith/endswith guide the fuzzer too. (atheris' "RegEx" hook cannot take bytes patterns.)
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=list(instrument)):
        module = importlib.import_module(module_name)
        if "PIL" in instrument:
            from PIL import Image

            Image.init()  # Pillow imports its format plugins on first use: import them now, instrumented
        from fuzz import outcome
    fuzz_one: Callable[[bytes], None] = module.fuzz_one
    skipped = set(filter(None, os.environ.get("FUZZ_SKIP", "").splitlines()))
    notes = os.environ.get("FUZZ_NOTES")

    def judged(data: bytes) -> None:
        try:
            fuzz_one(data)
        except Exception as error:
            kind = outcome.signature(error)
            if kind in skipped:
                return
            if notes:
                saved = Path(notes) / f"crash-{hashlib.sha1(data).hexdigest()}"
                saved.write_bytes(data)
                text = f"{kind}\n\n{''.join(traceback.format_exception(error))}"
                if isinstance(error, RecursionError):
                    text += f"\n(found with a recursion limit of {RECURSION_LIMIT}: nest deeper without it)\n"
                saved.with_name(saved.name + ".txt").write_text(text, errors="replace")
            raise

    return judged


def _declared_packages(source: Path) -> tuple[str, ...]:
    """The ``INSTRUMENT = (...)`` tuple of a target's source."""
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(name, "id", None) == "INSTRUMENT" for name in node.targets):
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple), source
            return tuple(str(name) for name in value)
    raise SystemExit(f"{source} declares no INSTRUMENT")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: python -m fuzz.worker {{{','.join(TARGETS)}}} [libFuzzer options] [corpus...]")
    fuzz_one = load(argv[1])
    sys.setrecursionlimit(RECURSION_LIMIT)
    # libFuzzer runs its own command line again through the shell to merge (-merge=1) or minimize
    # (-minimize_crash=1): it must be this worker's, not the path of this file.
    itself = f"{shlex.quote(sys.executable)} -m fuzz.worker {argv[1]}"
    atheris.Setup([itself, *argv[2:]], fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
