from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imgedit.api.errors import ApiError
from imgedit.api.parse import RequestLimits, parse_edit_request
from imgedit.edit import MAX_SEED
from imgedit.errors import RequestError
from imgedit.media.inputs import ImageSource
from imgedit.media.sizing import Size, SizeLimits
from tests.helpers import Refused, form, status_of

LIMITS = RequestLimits(
    max_images=4,
    max_prompt_chars=100,
    size=SizeLimits(max_side=2048, max_pixels=1024 * 1024),
    model_names=("qwen-edit", "Org/qwen-edit"),
)
PNG = b"\x89PNG-bytes"


def parse(*parts):
    return parse_edit_request(form(*parts), LIMITS)


def error_of(*parts) -> ApiError | RequestError:
    with pytest.raises(Refused) as caught:
        parse(*parts)
    return caught.value


def test_minimal_request_takes_the_defaults():
    request = parse(("image", PNG), ("prompt", "make it blue"))
    options = request.options
    assert options.prompt == "make it blue"
    assert [source.param for source in request.sources] == ["image[0]"]
    assert (options.n, request.size, request.output_format, request.output_compression) == (1, None, "png", 100)
    assert (request.background, options.quality, options.seed, options.num_inference_steps) == (
        "auto",
        "auto",
        None,
        None,
    )


@pytest.mark.parametrize("prompt", ["123", "null", '"quoted"', '{"a": 1}', "  padded  ", "true"])
def test_prompt_is_kept_verbatim(prompt):
    assert parse(("image", PNG), ("prompt", prompt)).options.prompt == prompt


def test_image_and_image_brackets_merge_in_arrival_order_then_urls():
    limits = RequestLimits(max_images=16, max_prompt_chars=10, size=LIMITS.size, model_names=LIMITS.model_names)
    request = parse_edit_request(
        form(
            ("url[]", "data:image/png;base64,AAAA"),
            ("image[]", b"first"),
            ("prompt", "p"),
            ("image", b"second"),
            ("url", "https://example.com/x.png"),
            ("image[]", b"third"),
        ),
        limits,
    )
    assert [source.data for source in request.sources[:3]] == [b"first", b"second", b"third"]
    assert [source.param for source in request.sources] == ["image[0]", "image[1]", "image[2]", "url[0]", "url[1]"]
    assert [source.url for source in request.sources[3:]] == ["data:image/png;base64,AAAA", "https://example.com/x.png"]


def test_every_field_is_parsed():
    request = parse(
        ("image", PNG),
        ("prompt", "p"),
        ("model", "Org/qwen-edit"),
        ("n", "3"),
        ("size", "512X256"),
        ("response_format", "b64_json"),
        ("output_format", "JPG"),
        ("output_compression", "40"),
        ("background", "opaque"),
        ("quality", "low"),
        ("user", "someone"),
        ("negative_prompt", "blurry"),
        ("num_inference_steps", "12"),
        ("guidance_scale", "2.5"),
        ("true_cfg_scale", "1e0"),
        ("image_guidance_scale", "1.25"),
        ("strength", "0.75"),
        ("mask", PNG),
        ("seed", str(MAX_SEED)),
        ("stream", "true"),
        ("partial_images", "2"),
        ("input_fidelity", "high"),
        ("unknown[field]", "ignored"),
    )
    options = request.options
    assert request.model == "Org/qwen-edit"
    assert (options.n, request.size) == (3, Size(512, 256))
    assert (request.output_format, request.output_compression, request.background) == ("jpeg", 40, "opaque")
    assert (options.quality, request.user, options.negative_prompt) == ("low", "someone", "blurry")
    assert (options.num_inference_steps, options.guidance_scale, options.true_cfg_scale) == (12, 2.5, 1.0)
    assert (options.image_guidance_scale, options.strength, request.mask) == (1.25, 0.75, ImageSource("mask", PNG))
    assert options.seed == MAX_SEED
    assert request.partial_images == 2
    assert request.stream is True


def test_no_image_and_no_url_is_422_with_the_spec_wording():
    error = error_of(("prompt", "p"))
    assert (status_of(error), error.message, error.param) == (422, "Field 'image' or 'url' is required", "image")


def test_too_many_images_is_400_before_any_fetch():
    error = error_of(("prompt", "p"), *[("image", PNG)] * 3, ("url", "http://10.0.0.1/a.png"), ("url", "x"))
    assert (status_of(error), error.param, error.code) == (400, "image", "too_many_images")
    assert "5 input images" in error.message and "at most 4" in error.message


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([], "prompt"),
        ([("prompt", "")], "prompt"),
        ([("prompt", "   ")], "prompt"),
        ([("prompt", "x" * 101)], "prompt"),
        ([("prompt", "p"), ("prompt", "q")], "prompt"),
        ([("prompt", "p"), ("model", "other")], "model"),
        ([("prompt", "p"), ("n", "0")], "n"),
        ([("prompt", "p"), ("n", "11")], "n"),
        ([("prompt", "p"), ("n", "2.0")], "n"),
        ([("prompt", "p"), ("n", "two")], "n"),
        ([("prompt", "p"), ("n", "1_0")], "n"),
        ([("prompt", "p"), ("size", "1024x")], "size"),
        ([("prompt", "p"), ("size", "32x32")], "size"),
        ([("prompt", "p"), ("size", "4096x64")], "size"),
        ([("prompt", "p"), ("size", "2048x2048")], "size"),
        ([("prompt", "p"), ("response_format", "url"), ("stream", "true")], "response_format"),
        ([("prompt", "p"), ("output_format", "gif")], "output_format"),
        ([("prompt", "p"), ("output_compression", "101")], "output_compression"),
        ([("prompt", "p"), ("output_compression", "-1")], "output_compression"),
        ([("prompt", "p"), ("background", "green")], "background"),
        ([("prompt", "p"), ("background", "transparent"), ("output_format", "jpeg")], "background"),
        ([("prompt", "p"), ("background", "transparent"), ("output_format", "jpg")], "background"),
        ([("prompt", "p"), ("quality", "ultra")], "quality"),
        ([("prompt", "p"), ("num_inference_steps", "0")], "num_inference_steps"),
        ([("prompt", "p"), ("num_inference_steps", "201")], "num_inference_steps"),
        ([("prompt", "p"), ("guidance_scale", "nan")], "guidance_scale"),
        ([("prompt", "p"), ("guidance_scale", "inf")], "guidance_scale"),
        ([("prompt", "p"), ("guidance_scale", "20.5")], "guidance_scale"),
        ([("prompt", "p"), ("true_cfg_scale", "-0.1")], "true_cfg_scale"),
        ([("prompt", "p"), ("true_cfg_scale", "4,0")], "true_cfg_scale"),
        ([("prompt", "p"), ("seed", "-1")], "seed"),
        ([("prompt", "p"), ("seed", str(MAX_SEED + 1))], "seed"),
        ([("prompt", "p"), ("stream", "maybe")], "stream"),
        ([("prompt", "p"), ("partial_images", "4")], "partial_images"),
        ([("prompt", "p"), ("mask", PNG), ("mask", PNG)], "mask"),
        ([("prompt", "p"), ("strength", "1.5")], "strength"),
        ([("prompt", "p"), ("image_guidance_scale", "-1")], "image_guidance_scale"),
        ([("prompt", b"\xff\xfe")], "prompt"),
        ([("prompt", "p"), ("url", "  ")], "url[0]"),
    ],
)
def test_bad_values_are_400_naming_the_field(parts, param):
    error = error_of(("image", PNG), *parts)
    assert status_of(error) == 400
    assert error.param == param
    assert error.message


def test_empty_optional_text_counts_as_absent():
    request = parse(("image", PNG), ("prompt", "p"), ("negative_prompt", ""), ("model", ""), ("size", ""))
    assert (request.options.negative_prompt, request.model, request.size) == (None, None, None)


def test_served_name_and_full_model_id_are_both_accepted():
    assert parse(("image", PNG), ("prompt", "p"), ("model", "qwen-edit")).model == "qwen-edit"
    error = error_of(("image", PNG), ("prompt", "p"), ("model", "gpt-image-1"))
    assert "'qwen-edit'" in error.message and "'Org/qwen-edit'" in error.message and "'gpt-image-1'" in error.message


# -- properties -------------------------------------------------------------------------------

PROPERTY_LIMITS = RequestLimits(
    max_images=4, max_prompt_chars=1000, size=SizeLimits(max_side=4096, max_pixels=2048 * 2048), model_names=("m",)
)


@given(value=st.integers(min_value=-(2**70), max_value=2**70), padding=st.sampled_from(["", " ", "+"]))
def test_seed_parses_exactly_the_64_bit_unsigned_integers(value, padding):
    text = f"{padding}{value}" if value >= 0 or padding != "+" else str(value)
    try:
        request = parse_edit_request(form(("image", b"x"), ("prompt", "p"), ("seed", text)), PROPERTY_LIMITS)
    except Refused as error:
        assert not 0 <= value <= MAX_SEED and error.param == "seed"
    else:
        assert 0 <= value <= MAX_SEED and request.options.seed == value


@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)))
def test_guidance_is_a_finite_number_from_0_to_20_or_a_400(value):
    text = repr(value) if isinstance(value, float) else value
    try:
        request = parse_edit_request(form(("image", b"x"), ("prompt", "p"), ("guidance_scale", text)), PROPERTY_LIMITS)
    except Refused as error:
        assert status_of(error) == 400 and error.param == "guidance_scale"
    else:
        assert request.options.guidance_scale is None or 0 <= request.options.guidance_scale <= 20


# -- JSON bodies ------------------------------------------------------------------------------------

DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def parse_json(body: dict):
    return parse_edit_request(body, LIMITS)


def json_error(body: dict) -> ApiError | RequestError:
    with pytest.raises(Refused) as caught:
        parse_json(body)
    return caught.value


def test_json_and_multipart_give_the_same_request():
    scalars = {
        "prompt": "p",
        "model": "Org/qwen-edit",
        "n": 3,
        "size": "512X256",
        "output_format": "JPG",
        "output_compression": 40,
        "background": "opaque",
        "quality": "standard",
        "input_fidelity": "high",
        "moderation": "low",
        "user": "someone",
        "safety_identifier": "hashed-user",
        "negative_prompt": "blurry",
        "num_inference_steps": 12,
        "guidance_scale": 2.5,
        "true_cfg_scale": 1,
        "image_guidance_scale": 1.25,
        "strength": 0.75,
        "seed": MAX_SEED,
        "stream": True,
        "partial_images": 2,
    }
    as_json = parse_json({**scalars, "images": [{"image_url": DATA_URL}], "mask": {"image_url": DATA_URL}})
    as_form = parse(
        ("url", DATA_URL),
        ("mask", PNG),
        *[(name, str(value).lower() if isinstance(value, bool) else str(value)) for name, value in scalars.items()],
    )
    assert as_json.options == as_form.options
    assert as_json.options.quality == "auto" and as_json.options.input_fidelity == "high"
    same = ("model", "size", "output_format", "output_compression", "background", "user", "stream", "partial_images")
    assert all(getattr(as_json, name) == getattr(as_form, name) for name in same)
    assert as_json.safety_identifier == as_form.safety_identifier == "hashed-user"
    assert [source.url for source in as_json.sources] == [DATA_URL]
    assert [source.param for source in as_json.sources] == ["images[0]"]
    assert as_json.mask == ImageSource("mask", url=DATA_URL)


def test_json_images_urls_and_chat_style_image_objects():
    request = parse_json(
        {
            "prompt": "p",
            "images": [{"image_url": DATA_URL}, {"image_url": {"url": "https://example.com/a.png"}}],
            "url": "https://example.com/b.png",
        }
    )
    assert [(source.param, source.url) for source in request.sources] == [
        ("images[0]", DATA_URL),
        ("images[1]", "https://example.com/a.png"),
        ("url[0]", "https://example.com/b.png"),
    ]
    assert [source.param for source in parse_json({"prompt": "p", "url": ["x:1", "x:2"]}).sources] == [
        "url[0]",
        "url[1]",
    ]


def test_json_nulls_empty_strings_and_unknown_keys_count_as_absent():
    request = parse_json(
        {"prompt": "p", "images": [{"image_url": DATA_URL}], "seed": None, "size": "", "mask": None, "extra": [1, {}]}
    )
    assert (request.options.seed, request.size, request.mask) == (None, None, None)


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"images": [{"image_url": DATA_URL}]}, "prompt", 400),
        ({"prompt": 3}, "prompt", 400),
        ({"prompt": "p", "n": "2"}, "n", 400),
        ({"prompt": "p", "n": 2.0}, "n", 400),
        ({"prompt": "p", "n": True}, "n", 400),
        ({"prompt": "p", "seed": -1}, "seed", 400),
        ({"prompt": "p", "seed": 2**64}, "seed", 400),
        ({"prompt": "p", "guidance_scale": "high"}, "guidance_scale", 400),
        ({"prompt": "p", "guidance_scale": float("inf")}, "guidance_scale", 400),
        # Integers beyond a double: the message used to format them as floats and fail with a 500.
        ({"prompt": "p", "guidance_scale": 10**400}, "guidance_scale", 400),
        ({"prompt": "p", "true_cfg_scale": -(10**300)}, "true_cfg_scale", 400),
        ({"prompt": "p", "lora": [{"name": "ink", "scale": 10**400}]}, "lora", 400),
        ({"prompt": "p", "stream": "true"}, "stream", 400),
        ({"prompt": "p", "stream": 1}, "stream", 400),
        ({"prompt": "p", "quality": ["high"]}, "quality", 400),
        ({"prompt": "p", "output_format": "gif"}, "output_format", 400),
        ({"prompt": "p", "output_format": "svg"}, "output_format", 400),
        ({"prompt": "p", "input_fidelity": "medium"}, "input_fidelity", 400),
        ({"prompt": "p", "moderation": "strict"}, "moderation", 400),
        ({"prompt": "p", "size": 1024}, "size", 400),
        ({"prompt": "p", "images": [{"file_id": "file-abc"}]}, "images", 400),
        ({"prompt": "p", "images": ["data:image/png;base64,AAAA"]}, "images[0]", 400),
        ({"prompt": "p", "images": [{"image_url": 5}]}, "images[0]", 400),
        ({"prompt": "p", "images": [{"image_url": "  "}]}, "images[0]", 400),
        ({"prompt": "p", "images": [{"image_url": DATA_URL}] * 5}, "images", 400),
        ({"prompt": "p", "url": [7]}, "url[0]", 400),
        ({"prompt": "p", "mask": {"file_id": "file-abc"}}, "mask", 400),
        ({"prompt": "p", "mask": "data:image/png;base64,AAAA"}, "mask", 400),
        ({"prompt": "p"}, "image", 422),
        ({"prompt": "p", "images": []}, "image", 422),
    ],
)
def test_bad_json_values_name_their_field(body, param, status):
    body = {"images": [{"image_url": DATA_URL}], **body} if "images" not in body and status == 400 else body
    error = json_error(body)
    assert (status_of(error), error.param) == (status, param)
    assert error.message


def test_json_type_errors_say_what_was_expected():
    assert json_error({"prompt": "p", "images": [{"image_url": DATA_URL}], "n": "2"}).message == (
        "Invalid type for 'n': expected an integer, got a string."
    )
    error = json_error({"prompt": "p", "images": [{"file_id": "file-abc"}]})
    assert error.code == "unsupported_file_id" and "Files API" in error.message
    error = json_error({"prompt": "p", "images": [{"image_url": DATA_URL}], "output_format": "gif"})
    assert "png, jpeg, webp" in error.message


def test_a_huge_number_is_written_back_cut_short():
    error = json_error({"prompt": "p", "images": [{"image_url": DATA_URL}], "guidance_scale": 10**400})
    written = "1000000000000000000000000000000000000..."
    assert error.message == f"Invalid value for 'guidance_scale': {written}; expected a number from 0 to 20."
