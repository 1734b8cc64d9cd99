from __future__ import annotations

import os

import pytest

# Nothing in the tests may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model():
    """The built-in tiny Qwen edit pipeline, built once per test session."""
    from imgedit.tiny import build_tiny

    return build_tiny("tiny:qwen-image-edit-plus")


@pytest.fixture
def anyio_backend():
    return "asyncio"
