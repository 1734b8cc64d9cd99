import os
import threading

import pytest

from imgedit.durable.links import KEY_BYTES, KEY_FILE, LinkSigner, load_or_create_key


def test_the_key_is_made_once_owner_only_and_kept(tmp_path):
    key = load_or_create_key(tmp_path)
    assert len(key) == KEY_BYTES
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path) == key
    assert [path.name for path in tmp_path.iterdir()] == [KEY_FILE]  # no draft left behind


def test_workers_starting_at_once_agree_on_one_key(tmp_path):
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(tmp_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1


def test_a_truncated_key_is_refused(tmp_path):
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match="delete it"):
        load_or_create_key(tmp_path)


def test_a_signature_covers_the_name_and_the_time():
    signer = LinkSigner(os.urandom(32))
    signature = signer.signature("a.png", 100)
    assert signer.verify("a.png", 100, signature)
    assert not signer.verify("b.png", 100, signature)
    assert not signer.verify("a.png", 101, signature)
    assert not signer.verify("a.png", 100, signature[:-1] + ("A" if signature[-1] != "A" else "B"))
    assert not signer.verify("a.png", 100, "")
    assert not signer.verify("a.png", 100, "\udcff")  # not even encodable: refused, not raised
    assert not LinkSigner(os.urandom(32)).verify("a.png", 100, signature)
