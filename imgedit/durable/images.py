"""Where ``response_format=url`` images are kept: a directory behind signed links, or an S3 bucket.

Every stored image is named ``<keep-until>_<token>.<extension>``: the Unix
second after which it may be deleted, then 32 random URL-safe characters. The
name alone says when it expires, so a sweep needs no index, and a name is
checked against :data:`NAME` before it touches the disk, so a link never reads
outside the store.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from imgedit.durable.links import LinkSigner

#: A stored image's name; anything else is no image of the store.
NAME = re.compile(r"(?P<until>[0-9]{10})_(?P<token>[A-Za-z0-9_-]{32})\.(?P<extension>png|jpeg|webp)")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
#: Where a directory store's images are served, under the server's base URL.
FILES_ROUTE = "/v1/images/files"
#: Unfinished writes older than this are leftovers of a crash, removed by the sweep.
_STALE_DRAFT_SECONDS = 3600


def new_name(keep_until: int, extension: str) -> str:
    """A fresh image name that expires at ``keep_until`` (Unix seconds)."""
    return f"{keep_until:010d}_{secrets.token_urlsafe(24)}.{extension}"


def keep_until(name: str) -> int | None:
    """The second after which the image ``name`` may be deleted; None when ``name`` is no image name."""
    match = NAME.fullmatch(name)
    return int(match["until"]) if match else None


class ImageStore(Protocol):
    """Keeps encoded images and hands out links to them."""

    def put(self, data: bytes, extension: str, keep_until: int) -> str:
        """Store ``data`` until ``keep_until``; returns its name."""

    def link(self, name: str, expires: int, base_url: str) -> str:
        """An absolute link to ``name`` valid until ``expires``; ``base_url`` is the server's, for a directory."""

    def delete(self, names: Iterable[str]) -> None:
        """Delete these images now (missing ones are skipped)."""

    def sweep(self, now: int) -> int:
        """Delete every image whose time has passed; returns how many."""


@dataclass(frozen=True)
class LinkRefused(Exception):
    """A link that opens nothing: ``status`` is 403 (bad signature), 404 (no such image) or 410 (expired)."""

    status: int
    message: str


class DirectoryStore:
    """Images in a local directory, served by imgedit itself at :data:`FILES_ROUTE` through signed links.

    Args:
        root: the directory (made, owner-only, if missing).
        signer: signs the links.
    """

    def __init__(self, root: Path, signer: LinkSigner) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root
        self.signer = signer

    def put(self, data: bytes, extension: str, keep_until: int) -> str:
        name = new_name(keep_until, extension)
        draft = self.root / f".{name}.part"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(draft, self.root / name)
        return name

    def link(self, name: str, expires: int, base_url: str) -> str:
        signature = self.signer.signature(name, expires)
        return f"{base_url.rstrip('/')}{FILES_ROUTE}/{name}?expires={expires}&signature={quote(signature)}"

    def open(self, name: str, expires: str | None, signature: str | None, now: float | None = None) -> Path:
        """The file a link points at, once its signature and time are checked.

        Raises:
            LinkRefused: 404 for a name that is no image of the store or an image already gone, 403 for a
                missing or wrong signature, 410 for an expired link or image.
        """
        until = keep_until(name)
        if until is None:
            raise LinkRefused(404, "No such image.")
        # isdigit() alone takes digits int() refuses ("²"): only ASCII digits are a time.
        if expires is None or signature is None or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
            raise LinkRefused(403, "This link is not signed; use the link exactly as the server gave it.")
        if not self.signer.verify(name, int(expires), signature):
            raise LinkRefused(403, "This link's signature does not match; use the link exactly as the server gave it.")
        now = time.time() if now is None else now
        if int(expires) < now or until < now:
            raise LinkRefused(410, "This link has expired.")
        path = self.root / name
        if not path.is_file():
            raise LinkRefused(404, "This image no longer exists.")
        return path

    def delete(self, names: Iterable[str]) -> None:
        for name in names:
            if keep_until(name) is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / name).unlink()

    def sweep(self, now: int) -> int:
        removed = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                until = keep_until(entry.name)
                stale_draft = entry.name.endswith(".part") and _age(entry) > _STALE_DRAFT_SECONDS
                if (until is not None and until < now) or stale_draft:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += until is not None
        return removed


def _age(entry: os.DirEntry[str]) -> float:
    try:
        return time.time() - entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


class S3Store:
    """Images in an S3 bucket (any S3-compatible store), behind presigned links.

    Args:
        bucket: the bucket, which must exist.
        prefix: the key prefix (``images/``, or empty).
        client: a ``boto3`` S3 client (:func:`s3_client`).
    """

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.client = client

    def check(self) -> None:
        """Fail now, rather than at the first edit, when the bucket cannot be reached.

        Raises:
            Exception: botocore's error, for the caller to report.
        """
        self.client.head_bucket(Bucket=self.bucket)

    def put(self, data: bytes, extension: str, keep_until: int) -> str:
        name = new_name(keep_until, extension)
        self.client.put_object(
            Bucket=self.bucket, Key=self.prefix + name, Body=data, ContentType=MEDIA_TYPES[extension]
        )
        return name

    def link(self, name: str, expires: int, base_url: str) -> str:
        seconds = max(1, expires - int(time.time()))
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.prefix + name}, ExpiresIn=seconds
            )
        )

    def delete(self, names: Iterable[str]) -> None:
        keys = [{"Key": self.prefix + name} for name in names if keep_until(name) is not None]
        for start in range(0, len(keys), 1000):  # S3's limit per call
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})

    def sweep(self, now: int) -> int:
        expired: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", ()):
                name = item["Key"][len(self.prefix) :]
                until = keep_until(name)
                if until is not None and until < now:
                    expired.append(name)
        self.delete(expired)
        return len(expired)


def parse_s3_location(location: str) -> tuple[str, str] | None:
    """``(bucket, prefix)`` of ``s3://bucket[/prefix]``, the prefix ending in ``/`` when not empty; None otherwise."""
    if not location.startswith("s3://"):
        return None
    bucket, _, prefix = location[5:].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client(endpoint_url: str | None) -> Any:
    """A ``boto3`` S3 client: credentials and region from the standard AWS variables and files.

    Path-style addressing with a custom endpoint, which every S3-compatible server takes.
    """
    import boto3
    from botocore.config import Config

    style = "path" if endpoint_url else "auto"
    config = Config(signature_version="s3v4", s3={"addressing_style": style}, retries={"max_attempts": 3})
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
