import pytest
from starlette.datastructures import Headers

from imgedit.api.errors import ApiError
from imgedit.api.headers import MAX_IDEMPOTENCY_KEY_CHARS, idempotency_key, prefers_async


def headers(*pairs: tuple[str, str]) -> Headers:
    return Headers(raw=[(name.lower().encode(), value.encode("latin-1")) for name, value in pairs])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((), False),
        (("respond-async",), True),
        (("Respond-Async",), True),
        (("return=minimal, respond-async; foo=bar",), True),
        (("wait=10", "respond-async"), True),
        (("respond-async=1",), True),
        (("respond-asynchronously",), False),
        (("return=representation",), False),
        (("no respond-async",), False),
    ],
)
def test_prefer_respond_async(values, expected):
    assert prefers_async(headers(*(("Prefer", value) for value in values))) is expected


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("abc", "abc"),
        (' "8e03978e-40d5-43e8-bc93-6894a57f9324" ', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("with spaces inside", "with spaces inside"),
        ("k" * MAX_IDEMPOTENCY_KEY_CHARS, "k" * MAX_IDEMPOTENCY_KEY_CHARS),
    ],
)
def test_idempotency_keys(value, key):
    assert idempotency_key(headers(("Idempotency-Key", value))) == key


def test_no_key_is_none():
    assert idempotency_key(headers()) is None


@pytest.mark.parametrize("value", ["", '""', "k" * (MAX_IDEMPOTENCY_KEY_CHARS + 1), "tab\there", "é"])
def test_bad_keys_are_400_naming_the_header(value):
    with pytest.raises(ApiError) as refused:
        idempotency_key(headers(("Idempotency-Key", value)))
    assert refused.value.status == 400 and refused.value.param == "Idempotency-Key"


def test_two_keys_are_refused():
    with pytest.raises(ApiError):
        idempotency_key(headers(("Idempotency-Key", "a"), ("Idempotency-Key", "b")))
