"""Write the seed corpus: ``python -m fuzz.seeds`` (re)writes the named seeds of ``fuzz/corpus`` and the dictionaries.

The seeds are small and meaningful: tiny images made with Pillow, multipart
bodies exactly as the ``openai`` SDK sends them (captured from the SDK itself
through a mock transport), and JSON bodies, LoRA spellings, sizes and URLs as
clients write them. Inputs that ``--grow`` merged in (named by their SHA-1)
are left alone. The multipart boundaries are random, so a rerun changes those
files; the rest comes out the same.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote_from_bytes

from PIL import Image

from fuzz import CORPUS, dictionaries

Seeds = dict[str, bytes]


def image(kind: str) -> bytes:
    """A tiny image file of ``kind`` (see :func:`images`)."""
    return images()[kind]


def images() -> Seeds:
    """Tiny files of every accepted format, with the features the decoder handles separately."""
    gradient = Image.linear_gradient("L").resize((12, 8))
    rgb = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.eval(gradient, lambda value: 0 if value < 96 else 255))  # transparent on the left: a mask
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees on display
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    saved = {
        "rgb.png": _save(rgb, "PNG"),
        "mask-rgba.png": _save(rgba, "PNG"),
        "palette-transparent.png": _save(rgb.quantize(4), "PNG", transparency=0),
        "grey-16bit.png": _save(gradient.convert("I").point(lambda value: value * 257).convert("I;16"), "PNG"),
        "grey-alpha.png": _save(rgba.convert("LA"), "PNG"),
        "exif-rotated.jpg": _save(rgb, "JPEG", quality=50, exif=exif),
        "grey.jpg": _save(gradient, "JPEG", quality=50),
        "lossy.webp": _save(rgb, "WEBP", quality=30),
        "alpha.webp": _save(rgba, "WEBP", lossless=True),
        "animated.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "transparent.gif": _save(rgb.quantize(4), "GIF", transparency=1),
        "rgb.bmp": _save(rgb.resize((4, 3)), "BMP"),
        "float.tif": _save(gradient.convert("F").point(lambda value: value / 255), "TIFF"),
        "grey-16bit.tif": _save(gradient.convert("I;16"), "TIFF", compression="tiff_deflate"),
    }
    return saved


def multipart() -> Seeds:
    """Request heads and bodies as the ``openai`` SDK sends them, and a few by hand."""
    png, mask = image("rgb.png"), image("mask-rgba.png")
    seeds = {
        "openai-one-image": _openai_edit(image=("cat.png", png, "image/png"), prompt="Add a red hat"),
        "openai-bytes-image": _openai_edit(image=png, prompt="Make it night", size="1024x1024", n=2),
        "openai-two-images-mask": _openai_edit(
            image=[("a.png", png, "image/png"), ("b.jpg", image("grey.jpg"), "image/jpeg")],
            mask=("mask.png", mask, "image/png"),
            prompt="Put the cat from the second image on the sofa",
            quality="high",
            output_format="webp",
            output_compression=80,
            background="opaque",
            extra_body={"seed": 7, "negative_prompt": "blurry", "lora": "style:0.5", "guidance_scale": 4.5},
        ),
        "openai-stream": _openai_edit(image=png, prompt="Sketch", stream=True, partial_images=2),
    }
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = _form("b0undary", [("prompt", "use the URL"), ("url[]", url), ("lora", '{"name": "ink-sketch"}')])
    seeds["url-field"] = _head("multipart/form-data; boundary=b0undary", body)
    seeds["chunked"] = _head("multipart/form-data; boundary=b0undary", body, "X-Chunks: 1,2,3,50")
    seeds["quoted-boundary-small-limits"] = _head(
        'multipart/form-data; charset=utf-8; boundary="a b:c"',
        _form("a b:c", [("prompt", "x"), ("n", "3"), ("image", "not an image"), ("size", "auto")]),
        "X-Max-Parts: 3\nX-Field-Bytes: 16",
    )
    long = "-" * 20 + "b" * 230  # 250 bytes: RFC 2046 allows 70, python-multipart 256
    seeds["long-boundary"] = _head(f"multipart/form-data; boundary={long}", _form(long, [("prompt", "x")]))
    seeds["unterminated"] = _head("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data")
    seeds["lying-length"] = _head("multipart/form-data; boundary=b0undary", body, "Content-Length: 5")
    return seeds


def json_body() -> Seeds:
    """Edit requests in JSON: OpenAI's shape, chat-style image objects, every option."""
    url = "data:image/png;base64," + base64.b64encode(image("rgb.png")).decode()
    full = {
        "model": "imgedit-fuzz",
        "prompt": "Turn the sky purple \U0001f306",  # json.dumps writes it as a surrogate pair of escapes
        "images": [{"image_url": url}, {"image_url": {"url": url}}],
        "url": ["https://example.com/cat.png"],
        "mask": {"image_url": "data:image/png;base64," + base64.b64encode(image("mask-rgba.png")).decode()},
        "n": 2,
        "size": "512x768",
        "quality": "standard",
        "output_format": "jpeg",
        "output_compression": 90,
        "seed": 18446744073709551615,
        "num_inference_steps": 20,
        "true_cfg_scale": 4.0,
        "strength": 0.6,
        "lora": [{"name": "style", "scale": 0.5}, "ink-sketch:1"],
        "stream": False,
        "user": "fuzz",
    }
    minimal = {"prompt": "Add a hat", "images": [{"image_url": url}]}
    return {
        "minimal.json": json.dumps(minimal).encode(),
        "every-option.json": json.dumps(full).encode(),
        "chunked": b"X-Chunks: 1,7\nContent-Length: 64\n\n" + json.dumps(minimal).encode(),
        "vllm-lora-file-id.json": json.dumps(
            {"prompt": "p", "images": [{"file_id": "file-1"}], "lora": {"lora_name": "a", "lora_path": "a"}}
        ).encode(),
        "not-an-object.json": b'[{"prompt": "p"}]',
        "deep.json": b'{"prompt": "p", "images": [{"image_url": "data:,"}], "lora": ' + _deep(240) + b"}",
    }


def fields() -> Seeds:
    """JSON objects for the ``j`` mode, and bytes for the made-up forms and dicts (see the target)."""
    shuffled = random.Random(20_240_601)
    seeds = {name: b"j" + value for name, value in json_body().items() if name.endswith(".json")}
    seeds.update({f"form-{index}": b"f" + shuffled.randbytes(160) for index in range(4)})
    seeds.update({f"dict-{index}": b"s" + shuffled.randbytes(160) for index in range(4)})
    return seeds


def lora() -> Seeds:
    """The ``lora`` field's spellings: text, JSON values (``\\x01``) and made-up values (``\\x02``)."""
    texts = ["style", "style:0.5", "a:1,b:0.5", " style : 1.25 , ink-sketch:-2 ", "v2.detail_x:8"]
    texts += ['{"name": "style", "scale": 0.7}', '{"lora_name": "a", "lora_path": "a/b.safetensors", "lora_scale": 1}']
    seeds = {f"text-{index}": text.encode() for index, text in enumerate(texts)}
    seeds["json-list"] = b'\x01[{"name": "a", "scale": 0.5}, "b:1", {"adapter": "c", "path": "c"}]'
    seeds["json-object"] = b'\x01{"lora_name": "a", "lora_scale": "0.25"}'
    seeds["made-up"] = b"\x02" + random.Random(7).randbytes(120)
    seeds["text-deep"] = b'{"name": "a", "scale": ' + _deep(240) + b"}"
    return seeds


def urls() -> Seeds:
    """Image URLs: data: URLs of every spelling, and http(s) ones (never fetched)."""
    png = image("rgb.png")
    encoded = base64.b64encode(png).decode()
    written = {
        "data-base64": "data:image/png;base64," + encoded,
        "data-urlsafe-unpadded": "data:image/png;base64," + base64.urlsafe_b64encode(png).decode().rstrip("="),
        "data-wrapped": "data:image/png;base64,\n" + "\n".join(encoded[i : i + 60] for i in range(0, len(encoded), 60)),
        "data-percent": "data:image/png," + quote_from_bytes(png),
        "data-text": "data:,hello%20world",
        "https": "https://example.com/images/cat.png?size=large#top",
        "http-ipv6": "http://[::ffff:127.0.0.1]:8080/x.png",
        "http-ipv6-zone": "http://[fe80::1%25eth0]/x.png",
        "http-metadata": "http://169.254.169.254/latest/meta-data/",
        "http-idn": "https://bücher.example/ö.png",
        "not-a-url": "ftp://example.com/a.png",
    }
    return {name: url.encode() for name, url in written.items()}


def size() -> Seeds:
    """Sizes as written, each followed by bytes that pick the limits, the first image and the multiple."""
    pick = random.Random(11)
    texts = ["auto", "1024x1024", " 512 X 768 ", "64x64", "4096x4096", "16384x64", "99999x1", "1024*1024"]
    return {f"size-{index}": text.encode() + b"\n" + pick.randbytes(40) for index, text in enumerate(texts)}


def admin() -> Seeds:
    """Bodies of vLLM's ``load_lora_adapter`` and ``unload_lora_adapter``."""
    return {
        "load.json": b'{"lora_name": "style", "lora_path": "/loras/style.safetensors"}',
        "load-scale.json": b'{"lora_name": "ink-sketch", "lora_path": "ink", "scale": 0.8}',
        "unload.json": b'{"lora_name": "style"}',
        "chunked": b'X-Chunks: 3\n\n{"lora_name": "style"}',
        "list.json": b'["style"]',
        "deep.json": b'{"lora_name": "style", "lora_path": ' + _deep(240) + b"}",
    }


def links() -> Seeds:
    """Headers, a link and a job id: a valid link, tampered ones, traversal, odd header values."""
    from fuzz.targets.links import EXPIRES, KEY, NAME
    from imgedit.durable.links import LinkSigner

    signature = LinkSigner(KEY).signature(NAME, EXPIRES + 1).encode()
    valid = [b"respond-async", b"8e03978e-40d5-43e8-bc93-6894a57f9324", NAME.encode(), str(EXPIRES + 1).encode()]
    return {
        "valid": b"\x00".join([*valid, signature]),
        "tampered": b"\x00".join([b"wait=5, respond-async;x=y", b'"quoted"', NAME.encode(), b"4102444999", signature]),
        "traversal": b"\x00".join([b"", b"k", b"../" + NAME.encode(), b"1", b"x"]),
        "job": b"\x00".join([b"RESPOND-ASYNC", b"\xe9", b"edit_" + b"0" * 32, b"", b""]),
    }


def presets() -> Seeds:
    """``IMGEDIT_PRESETS`` files: the shipped example, JSON, YAML's anchors and tags, and broken ones."""
    example = Path(__file__).resolve().parents[1] / "deploy" / "presets" / "qwen-image-edit-2511.yaml"
    return {
        "example.yaml": example.read_bytes(),
        "levers.json": b'{"medium": {"cfg_until": 0.5, "cache": "first_block", "cache_threshold": 0.1}}',
        "loras.yaml": b"low:\n  lora: [{name: fast, scale: 1.0}, 'ink:0.5']\n  num_inference_steps: 4\n",
        "anchors.yaml": b"low: &r {num_inference_steps: 4, cache: taylorseer, cache_interval: 3}\nmedium: *r\n",
        "tags.yaml": b"low: !!map {num_inference_steps: !!int 4, guidance_scale: !!float 1e3}\n",
        "text.yaml": b'high: {negative_prompt: "blurry, \\u00e9", input_fidelity: high, strength: 0.5}\n',
        "deep.yaml": b"low: " + b"[" * 200 + b"]" * 200 + b"\n",
        "broken.yaml": b"low: {num_inference_steps: 4\n\tmax: [\n",
    }


def models() -> Seeds:
    """A request's model and the three settings: several models with LoRAs and tiers, and the refusals' shapes."""
    return {
        "several": b"\x00".join(
            [b"klein", b"tiny:qwen-image-edit-plus,klein=tiny:flux2-klein", b"a=/l/a,klein/b=/l/b:0.5", b"k.yaml"]
        ),
        "tiers": b"\x00".join([b"anime", b"q=Qwen/Qwen-Image-Edit-2511,k=tiny:flux2", b"", b"q.yaml,k=k.yaml"]),
        "taken": b"\x00".join([b"\xff", b"a=tiny:flux2,a=tiny:flux2-klein", b"nobody/x=/l/x", b"nobody=x.yaml"]),
        "one": b"\x00".join([b"tiny:flux2-klein", b"", b"x=/l/x", b""]),
    }


SEEDS: dict[str, Callable[[], Seeds]] = {
    "multipart": multipart,
    "json_body": json_body,
    "fields": fields,
    "lora": lora,
    "urls": urls,
    "images": images,
    "size": size,
    "admin": admin,
    "presets": presets,
    "links": links,
    "models": models,
}


def write(corpus: Path = CORPUS) -> None:
    """Write every target's seeds under ``corpus``."""
    for target, make in SEEDS.items():
        folder = corpus / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (folder / name).write_bytes(data)


def _save(picture: Image.Image, format_name: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format_name, **options)
    return buffer.getvalue()


def _openai_edit(**arguments: object) -> bytes:
    """The request head and body the ``openai`` SDK sends for ``client.images.edit(**arguments)``."""
    import httpx2  # the openai SDK's HTTP client
    import openai

    captured: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        captured.append(request)
        return httpx2.Response(200, json={"created": 0, "data": [{"b64_json": ""}]})

    transport = httpx2.MockTransport(answer)
    client = openai.OpenAI(
        api_key="fuzz", base_url="http://fuzz.invalid/v1", max_retries=0, http_client=httpx2.Client(transport=transport)
    )
    # A streamed answer cannot be parsed from this stub; the request was sent all the same.
    with contextlib.suppress(openai.APIError):
        client.images.edit(**arguments)  # type: ignore[call-overload]  # any of the SDK's argument sets
    (request,) = captured
    return _head(request.headers["content-type"], request.read())


def _deep(levels: int) -> bytes:
    """JSON nested ``levels`` deep (past what imgedit accepts; the fuzzer may nest it deeper)."""
    return b"[" * levels + b"1" + b"]" * levels


def _form(boundary: str, fields: list[tuple[str, str]]) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n' for name, value in fields
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def _head(content_type: str, body: bytes, extra: str = "") -> bytes:
    lines = [f"Content-Type: {content_type}", *extra.splitlines()]
    return ("\n".join(lines) + "\n\n").encode() + body


if __name__ == "__main__":
    write()
    dictionaries.write()
