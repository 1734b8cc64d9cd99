import os
import time

import pytest

from imgedit.durable.images import DirectoryStore, LinkRefused, keep_until, new_name, parse_s3_location
from imgedit.durable.links import LinkSigner

NOW = 1_800_000_000


@pytest.fixture
def store(tmp_path):
    return DirectoryStore(tmp_path / "images", LinkSigner(os.urandom(32)))


def query(link: str) -> tuple[str, str, str]:
    path, _, params = link.partition("?")
    values = dict(pair.split("=", 1) for pair in params.split("&"))
    return path.rsplit("/", 1)[1], values["expires"], values["signature"]


def test_a_stored_image_opens_through_its_link(store):
    name = store.put(b"png bytes", "png", NOW + 100)
    link = store.link(name, NOW + 50, "http://edits.example/")
    assert link.startswith(f"http://edits.example/v1/images/files/{name}?expires={NOW + 50}&signature=")
    assert store.open(*query(link), now=NOW).read_bytes() == b"png bytes"
    assert (store.root / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda name, expires, signature: (name, str(int(expires) + 1), signature), 403),
        (lambda name, expires, signature: (name, expires, signature[::-1]), 403),
        (lambda name, expires, signature: (name, None, signature), 403),
        (lambda name, expires, signature: (name, expires, None), 403),
        (lambda name, expires, signature: (name, "9" * 400, signature), 403),
        (lambda name, expires, signature: (name, "-5", signature), 403),
        (lambda name, expires, signature: (name, "\u00b2", signature), 403),  # a digit to isdigit(), not to int()
        (lambda name, expires, signature: (name, "\u0661\u0662", signature), 403),
        (lambda name, expires, signature: ("../" + name, expires, signature), 404),
        (lambda name, expires, signature: ("..", expires, signature), 404),
        (lambda name, expires, signature: ("/etc/passwd", expires, signature), 404),
        (lambda name, expires, signature: (name.replace(".png", ".txt"), expires, signature), 404),
        (lambda name, expires, signature: (name + "\x00", expires, signature), 404),
        (lambda name, expires, signature: ("x" * 100_000, expires, signature), 404),
    ],
)
def test_a_tampered_or_foreign_link_opens_nothing(store, change, status):
    link = store.link(store.put(b"x", "png", NOW + 100), NOW + 50, "http://h")
    with pytest.raises(LinkRefused) as refused:
        store.open(*change(*query(link)), now=NOW)
    assert refused.value.status == status


def test_a_link_of_another_store_key_is_refused(store, tmp_path):
    other = DirectoryStore(store.root, LinkSigner(os.urandom(32)))
    link = other.link(store.put(b"x", "png", NOW + 100), NOW + 50, "http://h")
    with pytest.raises(LinkRefused) as refused:
        store.open(*query(link), now=NOW)
    assert refused.value.status == 403


def test_expired_links_and_images_are_gone(store):
    name = store.put(b"x", "webp", NOW + 100)
    with pytest.raises(LinkRefused) as expired_link:
        store.open(*query(store.link(name, NOW - 1, "http://h")), now=NOW)
    with pytest.raises(LinkRefused) as expired_image:
        store.open(*query(store.link(name, NOW + 500, "http://h")), now=NOW + 200)
    assert expired_link.value.status == expired_image.value.status == 410


def test_a_deleted_image_is_404(store):
    name = store.put(b"x", "jpeg", NOW + 100)
    store.delete([name, "../../escape.png", "not-an-image"])
    with pytest.raises(LinkRefused) as gone:
        store.open(*query(store.link(name, NOW + 50, "http://h")), now=NOW)
    assert gone.value.status == 404


def test_the_sweep_deletes_only_expired_images_and_stale_drafts(store):
    kept = store.put(b"x", "png", NOW + 100)
    expired = store.put(b"x", "png", NOW - 1)
    (store.root / "notes.txt").write_text("not ours")
    stale = store.root / f".{new_name(NOW, 'png')}.part"
    stale.write_bytes(b"half")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert store.sweep(NOW) == 1
    assert sorted(path.name for path in store.root.iterdir()) == sorted([kept, "notes.txt"])
    assert expired not in os.listdir(store.root)


def test_names_carry_their_time():
    name = new_name(NOW, "png")
    assert keep_until(name) == NOW
    assert keep_until("1800000000_short.png") is None
    assert new_name(NOW, "png") != name


@pytest.mark.parametrize(
    ("location", "parsed"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/a/b/", ("bucket", "a/b/")),
        ("s3://bucket//a", ("bucket", "a/")),
        ("/var/images", None),
        ("S3://bucket", None),
    ],
)
def test_s3_locations(location, parsed):
    assert parse_s3_location(location) == parsed
