"""Run by Python at start-up in every process with this folder on ``PYTHONPATH``: the test hooks (see
``devtools/test_hooks.py``, and the development page of the docs)."""

from devtools.test_hooks import install

install()
