"""Signed, expiring links to stored images: the signature is the credential, so a link needs no API key.

A link names one image and the second it expires; an HMAC-SHA256 of both,
under a key kept in the data directory, signs it. Changing either breaks the
signature, and the key outlives restarts, so links stay valid until they expire.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "signing.key"
KEY_BYTES = 32


def load_or_create_key(directory: Path) -> bytes:
    """The signing key kept in ``directory``, made on first use.

    Several workers may start at once: the key is written to a file of its
    own, then linked into place, which fails for all but the first; the others
    read the winner's key.

    Raises:
        OSError: the directory cannot be written or the key read.
        ValueError: the key file holds fewer than :data:`KEY_BYTES` bytes.
    """
    path = directory / KEY_FILE
    if not path.exists():
        draft = directory / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(secrets.token_bytes(KEY_BYTES))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                draft.unlink()
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes; expected {KEY_BYTES} (delete it to make a new key)")
    return key


class LinkSigner:
    """Signs and checks ``(name, expires)`` pairs.

    Args:
        key: the secret key (:func:`load_or_create_key`).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def signature(self, name: str, expires: int) -> str:
        """The signature of a link to ``name`` that expires at ``expires`` (Unix seconds): URL-safe base64."""
        digest = hmac.new(self._key, f"{name}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def verify(self, name: str, expires: int, signature: str) -> bool:
        """Whether ``signature`` signs ``(name, expires)``; the comparison takes the same time for any mismatch."""
        return hmac.compare_digest(self.signature(name, expires).encode(), signature.encode("utf-8", "replace"))
