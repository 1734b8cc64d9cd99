"""Coverage-guided fuzzing of everything that reads what a client sends, with atheris.

Each target (one module of :mod:`fuzz.targets`) feeds fuzz-made input to one of
imgedit's parsers in process and judges the outcome: a normal return, a
:class:`~imgedit.errors.RequestError` or an :class:`~imgedit.api.errors.ApiError`
below 500 is a correct answer to bad input; any other exception, a 500 or a broken
promise about the result is a crash, which atheris records with its input.

``python -m fuzz`` runs the targets (see :mod:`fuzz.run`); ``python -m fuzz.worker
TARGET`` is one target under libFuzzer, in a process of its own (libFuzzer exits
the process when it stops). Nothing here is imported by the server.
"""

from __future__ import annotations

from pathlib import Path

#: Every target, in the order the runner runs them; each is a module of :mod:`fuzz.targets`.
TARGETS = ("multipart", "json_body", "fields", "lora", "urls", "images", "size", "admin", "presets", "links", "models")
HERE = Path(__file__).resolve().parent
#: The committed seed inputs, one folder per target.
CORPUS = HERE / "corpus"
#: Where crashing inputs are saved, one folder per target (ignored by git).
CRASHES = HERE / "crashes"
#: The libFuzzer dictionaries, ``TARGET.dict`` (see :mod:`fuzz.dictionaries`).
DICTS = HERE / "dicts"
