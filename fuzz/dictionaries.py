"""libFuzzer dictionaries: the tokens each target's input format is made of.

Mutating bytes one at a time seldom spells ``boundary=`` or ``"lora_scale"``;
with a dictionary libFuzzer splices whole tokens in (each at most 64 bytes, its limit). ``python -m fuzz.seeds``
writes them to ``fuzz/dicts/TARGET.dict`` (made from the field table, so they
follow it), and the runner hands each worker its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fuzz import DICTS
from imgedit.api.fields import FIELDS

#: libFuzzer's longest dictionary token.
MAX_TOKEN_BYTES = 64
_KEYS = sorted({name for field in FIELDS for name in (field.key, *field.names)})
_KEYS += ["image_url", "url", "file_id", "name", "scale", "path", "lora_name", "lora_scale", "lora_path", "adapter"]
_SPELLINGS = sorted({spelling for field in FIELDS for spelling in field.spellings})
#: Numbers at the edges: a double's end, past it, a seed's end and past it, NaN's spellings.
_NUMBERS = ["1e308", "1e309", "1e400", "-0", "18446744073709551615", "18446744073709551616", "NaN", "Infinity"]
_NUMBERS += ["9" * 60, "0." + "0" * 30 + "1", "20.000000001", "1E+2"]
_JSON = [f'"{key}":' for key in _KEYS] + [f'"{spelling}"' for spelling in _SPELLINGS] + _NUMBERS
_JSON += ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "null", "true"]
_JSON += ["[" * 64, "[" * 16, "]" * 16, '{"name":' * 8]  # deep nesting, a token at a time
_HEAD = ["Content-Type: ", "Content-Length: ", "X-Chunks: ", "X-Max-Body: ", "X-Max-Parts: ", "X-Field-Bytes: "]
_HEAD += ["\n\n", "\r\n\r\n", "1,", "0,"]

TOKENS: dict[str, list[str | bytes]] = {
    "multipart": [
        *_HEAD,
        *("multipart/form-data", "; boundary=", 'boundary="', "b" * 64, "; charset=utf-8"),
        *("\r\n--", "--\r\n", 'Content-Disposition: form-data; name="', '"; filename="', "Content-Type: image/png"),
        *(f'name="{key}"' for key in _KEYS),
        *_SPELLINGS,
        *_NUMBERS,
    ],
    "json_body": [*_HEAD, *_JSON],
    "fields": ["j", "s", "{", *_JSON],
    "lora": [b"\x01", b"\x02", ":", ",", *_JSON, "a" * 64, "ink-sketch", "style"],
    "urls": [
        *("data:", ";base64,", "data:image/png;base64,", "iVBORw0KGgo", "%", "%ff", "%%", "==", "-_", " \n"),
        *(b"\xed\xa0\x80", b"\xff", "http://", "https://", "[::1]", "[::ffff:7f00:1]", "@", ":65536", ":0", "#", "?"),
        *("xn--", "localhost", "169.254.169.254", "%2e%2e/", "\\", "\t"),
    ],
    "images": [
        *(b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"eXIf", b"iCCP", b"acTL", b"fcTL"),
        *(b"\xff\xd8\xff", b"\xff\xe1", b"Exif\x00\x00", b"MM\x00*", b"II*\x00", b"\x01\x12", b"\xff\xc0", b"\xff\xda"),
        *(b"RIFF", b"WEBP", b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"GIF89a", b"NETSCAPE2.0", b"BM"),
        *(b"\xff\xff\xff\x7f", b"\x00\x00\xff\xff", b"\x00\x01\x00\x00", b"\x10\x00"),
    ],
    "size": ["x", "X", "auto", "AUTO", " ", "\n", "64", "4096", "16384", "999999", "١", "０"],
    "admin": [*_HEAD, *_JSON],
    "links": [
        *("respond-async", "wait=", "return=minimal", ", ", "; ", '"', "edit_", "\x00", "../", "%2F", ".png", ".jpeg"),
        *("4102444800_", "4102445001", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "=", "-", "_"),
        *_NUMBERS,
    ],
    "presets": [
        *("low:", "medium:", "high:", "xhigh:", "max:", "\n  ", ": ", "{", "}", "[", "]", "- ", "&a ", "*a", "<<: "),
        *("!!int ", "!!float ", "!!str ", "!!map ", "!!binary ", "!!python/object ", "%YAML 1.1\n", "---\n", "..."),
        *("num_inference_steps", "guidance_scale", "true_cfg_scale", "image_guidance_scale", "strength"),
        *("negative_prompt", "input_fidelity", "lora", "cfg_until", "cache", "cache_threshold", "cache_interval"),
        *("first_block", "taylorseer", "none", ".inf", ".nan", "~", "null", "yes", "0x1F", "1_000", "0o17", "1e400"),
        *_NUMBERS,
    ],
    "models": [
        *("\x00", ",", "=", "/", ":", " ", "tiny:", "bentoml:", "first", "klein", "anime", "Qwen/Qwen-Image-Edit-2511"),
        *("tiny:qwen-image-edit-plus", "tiny:flux2-klein", ".safetensors", ":0.5", ".yaml", "~/", "../"),
    ],
}


def path(target: str) -> Path:
    """Where ``target``'s dictionary is."""
    return DICTS / f"{target}.dict"


def write(folder: Path = DICTS) -> None:
    """Write every target's dictionary under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for target, tokens in TOKENS.items():
        (folder / f"{target}.dict").write_text(render(tokens))


def render(tokens: Iterable[str | bytes]) -> str:
    """libFuzzer's dictionary format: one quoted token a line; bytes other than printable ASCII as ``\\xNN``."""
    lines = []
    for token in dict.fromkeys(tokens):
        raw = token.encode() if isinstance(token, str) else token
        assert len(raw) <= MAX_TOKEN_BYTES, f"libFuzzer takes tokens of at most {MAX_TOKEN_BYTES} bytes: {raw[:20]!r}"
        escaped = "".join(chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}" for byte in raw)
        lines.append(f'"{escaped}"')
    return "\n".join(lines) + "\n"
