import pytest

from imgedit.durable.database import Database
from imgedit.durable.idempotency import IdempotencyTable, StoredAnswer

NOW = 1_800_000_000.0
ANSWER = StoredAnswer(status=200, headers={"content-type": "application/json"}, body=b'{"created": 1}')


@pytest.fixture
def keys(tmp_path):
    return IdempotencyTable(Database(tmp_path), ttl=100)


def test_the_first_answer_is_replayed_to_the_same_request(keys):
    assert keys.begin("o", "k", "fp", NOW, hold=10) == "begun"
    assert keys.begin("o", "k", "fp", NOW + 1, hold=10) == "busy"
    assert keys.begin("o", "k", "other", NOW + 1, hold=10) == "mismatch"
    keys.keep("o", "k", ANSWER, NOW + 2)
    assert keys.begin("o", "k", "fp", NOW + 3, hold=10) == ANSWER
    assert keys.begin("o", "k", "other", NOW + 3, hold=10) == "mismatch"


def test_keys_belong_to_their_owner(keys):
    assert keys.begin("alice", "k", "fp", NOW, hold=10) == "begun"
    assert keys.begin("bob", "k", "fp", NOW, hold=10) == "begun"


def test_a_released_key_runs_again(keys):
    keys.begin("o", "k", "fp", NOW, hold=10)
    keys.release("o", "k")
    assert keys.begin("o", "k", "other", NOW, hold=10) == "begun"


def test_a_key_held_by_a_request_that_never_finished_is_taken_over(keys):
    keys.begin("o", "k", "fp", NOW, hold=10)
    assert keys.begin("o", "k", "fp", NOW + 11, hold=10) == "begun"


def test_keys_expire(keys):
    keys.begin("o", "k", "fp", NOW, hold=10)
    keys.keep("o", "k", ANSWER, NOW)
    assert keys.begin("o", "k", "other", NOW + 101, hold=10) == "begun"
    keys.begin("o", "gone", "fp", NOW, hold=10)
    keys.keep("o", "gone", ANSWER, NOW)
    assert keys.sweep(NOW + 500) == 2
