"""Reused encodings: the encoders' outputs kept, least recently used first out, for the next edit that needs them.

A request's prompt and negative prompt go through the text (or vision-language)
encoder, and its reference images through the VAE, before any denoising step;
a client that retries, varies only the seed or the steps, or edits the same
picture again pays for them again. A family names the pipeline methods that
compute such encodings (:attr:`Family.encoders <imgedit.model.families.base.Family.encoders>`):
methods whose result depends on their arguments and the weights alone. This
module replaces each, on the pipeline instance, by one that looks its
arguments up first.

The key is a hash of exactly what the method receives: prompt texts, the
decoded and resized image pixels or tensors (their bytes, shape, dtype and
device), sizes and options, and the method's name. The weights are no part of
it: a family names only encoders that no LoRA it loads changes (the LoRAs of
Qwen-Image-Edit and FLUX.2 touch their transformer alone; FLUX.1's reach CLIP, not T5). The pictures are the same bytes
with or without the cache: a hit returns the tensors the same call computed
before, and the pipelines only read them.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from PIL import Image

from imgedit.model.events import encoding_lookup
from imgedit.model.pipeline import Pipeline

#: Megabytes kept by default: on a GPU the encodings of a few hundred edits at 1 MP; on the CPU less.
DEFAULT_MEGABYTES = {"cuda": 1024, "cpu": 256}


class EncodingCache:
    """Encodings by key, within ``max_bytes``, the least recently used evicted first.

    Args:
        max_bytes: the most bytes of tensors kept (0 keeps nothing, and :meth:`wrap` changes nothing).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """Bytes of tensors kept now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str, compute: Callable[[], Any]) -> Any:
        """The encoding kept under ``key``, or ``compute()``'s, kept if it fits."""
        found = self._entries.get(key)
        encoding_lookup(found is not None)
        if found is not None:
            self._entries.move_to_end(key)
            return found[0]
        value = compute()
        size = _tensor_bytes(value)
        if 0 < size <= self.max_bytes:
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
        return value

    def wrap(self, pipeline: Pipeline, methods: Iterable[str]) -> None:
        """Have ``pipeline``'s ``methods`` look their arguments up here first (nothing when ``max_bytes`` is 0)."""
        if self.max_bytes <= 0:
            return
        for name in methods:
            original = getattr(pipeline, name)
            setattr(pipeline, name, self._memoized(name, original))

    def _memoized(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def looked_up(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("prompt_embeds") is not None:  # handed its result already: nothing to save, much to hash
                return method(*args, **kwargs)
            digest = hashlib.blake2b(name.encode() + b"\0", digest_size=20)
            try:
                fingerprint((args, sorted(kwargs.items())), digest)
            except TypeError:  # an argument the key cannot hold: computed, not kept
                return method(*args, **kwargs)
            return self.lookup(digest.hexdigest(), lambda: method(*args, **kwargs))

        return looked_up


def fingerprint(value: Any, digest: Any) -> None:
    """Feed ``digest`` with everything that decides an encoder's result in ``value``.

    A tensor on a GPU is copied to the host to be hashed: a 1024x1024 reference
    in bfloat16 is 6 MiB, about half a millisecond over PCIe 4, against the
    encoder run a hit saves (the VAE's tens of milliseconds; 0.6 to 1.7 s of
    text encoding in SGLang's published baselines).

    Raises:
        TypeError: a value of a kind that cannot be fingerprinted (the method must not be cached).
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        digest.update(f"T{tuple(tensor.shape)}{tensor.dtype}{tensor.device}".encode())
        digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Image.Image):
        digest.update(f"I{value.mode}{value.size}".encode())
        digest.update(value.tobytes())
    elif isinstance(value, str):
        digest.update(b"S" + len(value).to_bytes(8, "little") + value.encode("utf-8", "surrogatepass"))
    elif value is None or isinstance(value, bool | int | float | torch.device | torch.dtype):
        digest.update(f"V{type(value).__name__}:{value!r}".encode())
    elif isinstance(value, list | tuple):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            fingerprint(item, digest)
    elif isinstance(value, torch.Generator):
        # Only for methods that do not draw from it (a VAE encoded by its mode): the state is no part of the result.
        digest.update(b"G")
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (a tensor, or tuples and lists of them); other items count nothing."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(item) for item in value)
    return 0
