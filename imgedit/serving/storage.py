"""The parts of a server that outlive a connection, opened from the settings: data directory, image store,
jobs, idempotency keys, webhooks.

``bentoml serve`` checks them once before the workers start (:func:`check_storage`),
and each worker opens its own handles (:func:`open_storage`) on the same directory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import Headers

from imgedit.config import Settings
from imgedit.durable.database import Database
from imgedit.durable.idempotency import IdempotencyTable
from imgedit.durable.images import DirectoryStore, ImageStore, S3Store, parse_s3_location, s3_client
from imgedit.durable.jobs import JobTable, runner_name
from imgedit.durable.links import LinkSigner, load_or_create_key
from imgedit.durable.webhooks import WebhookSender, check_secret
from imgedit.errors import StartupError, one_line
from imgedit.media.fetch import Fetcher


def data_directory(settings: Settings) -> Path:
    """``IMGEDIT_DATA_DIR``, by default ``$XDG_DATA_HOME/imgedit`` (``~/.local/share/imgedit``)."""
    if settings.data_dir:
        return Path(settings.data_dir).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "imgedit"


@dataclass(frozen=True, kw_only=True)
class Storage:
    """What one worker keeps beyond a connection.

    Attributes:
        images: where ``response_format=url`` images go.
        jobs: the background jobs every worker shares.
        replays: the idempotency keys.
        webhooks: sends job events; None without ``IMGEDIT_WEBHOOK_SECRET``.
        webhook_url: ``IMGEDIT_WEBHOOK_URL``.
        url_ttl: seconds a link works.
        public_url: the base of imgedit's own links; None for the request's own.
        keyed: whether API keys are configured (jobs and keys then belong to the key that made them).
    """

    images: ImageStore
    jobs: JobTable
    replays: IdempotencyTable
    webhooks: WebhookSender | None
    webhook_url: str | None
    url_ttl: int
    public_url: str | None
    keyed: bool

    def owner(self, headers: Headers) -> str:
        """Who a request acts for: a digest of its API key when keys are configured, else everyone ("")."""
        if not self.keyed:
            return ""
        token = headers.get("authorization", "").partition(" ")[2].strip()
        return hashlib.sha256(token.encode()).hexdigest()

    def base_url(self, request_base: str) -> str:
        """The base of a link imgedit serves itself."""
        return (self.public_url or request_base).rstrip("/")


def link_origins(settings: Settings) -> tuple[str, ...]:
    """Where links to stored images point other than this server: the S3 store's origin (AWS's hosts by default)."""
    location = settings.image_store or ""
    if parse_s3_location(location) is None:
        return ()
    if settings.s3_endpoint_url is None:
        return ("https://*.amazonaws.com",)
    scheme, _, rest = settings.s3_endpoint_url.partition("://")
    return (f"{scheme}://{rest.split('/', 1)[0]}",)


def check_storage(settings: Settings) -> None:
    """Make the data directory and the signing key, and reach the S3 bucket, before any worker starts.

    Raises:
        StartupError: naming the variable at fault.
    """
    directory = data_directory(settings)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        load_or_create_key(directory)
        Database(directory).close()
    except (OSError, ValueError) as error:
        raise StartupError(f"IMGEDIT_DATA_DIR: cannot use {str(directory)!r}: {one_line(error)}") from None
    if settings.webhook_secret is not None:
        try:
            check_secret(settings.webhook_secret.get_secret_value())
        except ValueError as error:
            raise StartupError(f"IMGEDIT_WEBHOOK_SECRET: {error}") from None
    if settings.webhook_url is not None and settings.webhook_secret is None:
        raise StartupError("IMGEDIT_WEBHOOK_URL: webhooks are signed, so they need IMGEDIT_WEBHOOK_SECRET")
    store = _image_store(settings, directory)
    if isinstance(store, S3Store):
        try:
            store.check()
        except Exception as error:
            reason = one_line(error)
            raise StartupError(f"IMGEDIT_IMAGE_STORE: cannot reach {settings.image_store!r}: {reason}") from None


def open_storage(settings: Settings, fetcher: Fetcher) -> Storage:
    """This worker's handles on the data directory (:func:`check_storage` made it)."""
    directory = data_directory(settings)
    database = Database(directory)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret is not None else None
    return Storage(
        images=_image_store(settings, directory),
        jobs=JobTable(database, runner_name(), settings.job_ttl, settings.served_name),
        replays=IdempotencyTable(database, settings.idempotency_ttl),
        webhooks=WebhookSender(secret, fetcher) if secret is not None else None,
        webhook_url=settings.webhook_url,
        url_ttl=settings.image_url_ttl,
        public_url=settings.public_url,
        keyed=settings.api_key is not None,
    )


def _image_store(settings: Settings, directory: Path) -> ImageStore:
    location = settings.image_store or str(directory / "images")
    s3 = parse_s3_location(location)
    if s3 is not None:
        bucket, prefix = s3
        if not bucket:
            raise StartupError(f"IMGEDIT_IMAGE_STORE: {location!r} names no bucket; use s3://bucket/prefix")
        return S3Store(bucket, prefix, s3_client(settings.s3_endpoint_url))
    try:
        return DirectoryStore(Path(location).expanduser(), LinkSigner(load_or_create_key(directory)))
    except (OSError, ValueError) as error:
        raise StartupError(f"IMGEDIT_IMAGE_STORE: cannot use {location!r}: {one_line(error)}") from None
