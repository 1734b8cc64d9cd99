"""The fuzz targets, one module per target (the names are :data:`fuzz.TARGETS`).

Each module has:

* ``fuzz_one(data: bytes) -> None``: one input, judged as :mod:`fuzz.outcome` says;
* ``INSTRUMENT``: the top-level packages whose code atheris instruments for it;
* ``DRIVES``: the dotted names of the functions it calls (a test checks that
  every parser is some target's).
"""
