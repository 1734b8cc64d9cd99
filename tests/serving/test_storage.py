import base64

import pytest
from starlette.datastructures import Headers

from imgedit.config import ConfigError, Settings, load_settings
from imgedit.durable.images import DirectoryStore, S3Store
from imgedit.errors import StartupError
from imgedit.media.fetch import Fetcher, FetchPolicy
from imgedit.serving.storage import check_storage, data_directory, link_origins, open_storage

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IMGEDIT_IMAGE_URL_TTL", "0"),
        ("IMGEDIT_IMAGE_URL_TTL", "604801"),
        ("IMGEDIT_IMAGE_URL_TTL", "an hour"),
        ("IMGEDIT_JOB_TTL", "-1"),
        ("IMGEDIT_JOB_TTL", "99999999999"),
        ("IMGEDIT_IDEMPOTENCY_TTL", "1.5"),
        ("IMGEDIT_PUBLIC_URL", "edits.example.com"),
        ("IMGEDIT_PUBLIC_URL", "https://edits.example.com/?x=1"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        load_settings()


def test_the_data_directory_defaults_to_the_users_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert data_directory(Settings()) == tmp_path / "imgedit"
    assert data_directory(Settings(data_dir="~/x")).name == "x"


def test_check_makes_the_directory_owner_only(tmp_path):
    directory = tmp_path / "data"
    check_storage(Settings(data_dir=str(directory)))
    assert directory.stat().st_mode & 0o777 == 0o700
    assert {path.name for path in directory.iterdir()} >= {"signing.key", "imgedit.sqlite3", "images"}


def test_a_data_directory_that_cannot_be_made_stops_start_up(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StartupError, match=r"^IMGEDIT_DATA_DIR: "):
        check_storage(Settings(data_dir=str(tmp_path / "file" / "data")))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"webhook_url": "https://hooks.example/x"}, "^IMGEDIT_WEBHOOK_URL: .*IMGEDIT_WEBHOOK_SECRET"),
        ({"webhook_secret": "not-a-secret"}, "^IMGEDIT_WEBHOOK_SECRET: "),
        ({"webhook_secret": "whsec_c2hvcnQ="}, "^IMGEDIT_WEBHOOK_SECRET: "),
        ({"image_store": "s3://"}, "^IMGEDIT_IMAGE_STORE: .*no bucket"),
        ({"image_store": "s3://b/p", "s3_endpoint_url": "http://127.0.0.1:9"}, "^IMGEDIT_IMAGE_STORE: cannot reach"),
    ],
)
def test_refusals_name_the_variable(tmp_path, monkeypatch, settings, message):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    with pytest.raises(StartupError, match=message):
        check_storage(Settings(data_dir=str(tmp_path), **settings))


def test_a_worker_opens_the_store_the_settings_name(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    fetcher = Fetcher(FetchPolicy())
    local = open_storage(Settings(data_dir=str(tmp_path), webhook_secret=SECRET), fetcher)
    assert isinstance(local.images, DirectoryStore) and local.images.root == tmp_path / "images"
    assert local.webhooks is not None and local.owner(Headers({"authorization": "Bearer k"})) == ""
    remote = open_storage(Settings(data_dir=str(tmp_path), image_store="s3://bucket/a/b", api_key="k"), fetcher)
    assert isinstance(remote.images, S3Store) and (remote.images.bucket, remote.images.prefix) == ("bucket", "a/b/")
    assert remote.webhooks is None
    owner = remote.owner(Headers({"authorization": "Bearer k"}))
    assert owner and owner != remote.owner(Headers({"authorization": "Bearer other"})) and "k" not in owner


def test_the_playground_may_show_images_from_the_s3_store_only():
    assert link_origins(Settings()) == ()
    assert link_origins(Settings(image_store="/srv/images")) == ()
    assert link_origins(Settings(image_store="s3://b")) == ("https://*.amazonaws.com",)
    endpoint = Settings(image_store="s3://b/p", s3_endpoint_url="http://minio:9000/some/path")
    assert link_origins(endpoint) == ("http://minio:9000",)


def test_links_use_the_public_url_when_set(tmp_path):
    fetcher = Fetcher(FetchPolicy())
    settings = Settings(data_dir=str(tmp_path), public_url="https://edits.example.com/api/")
    behind_a_proxy = open_storage(settings, fetcher)
    assert behind_a_proxy.base_url("http://10.0.0.5:3000/") == "https://edits.example.com/api"
    direct = open_storage(Settings(data_dir=str(tmp_path)), fetcher)
    assert direct.base_url("http://10.0.0.5:3000/") == "http://10.0.0.5:3000"
    link = direct.images.link("1800000000_" + "A" * 32 + ".png", 1_800_000_000, behind_a_proxy.base_url("x"))
    assert link.startswith("https://edits.example.com/api/v1/images/files/1800000000_")
