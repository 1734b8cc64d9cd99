from types import SimpleNamespace

from imgedit.api.multipart import Form, Part
from imgedit.config import Settings
from imgedit.serving.routing import ModelRouter


def handler(name: str, source: str, loras: tuple[str, ...] = ()):
    return SimpleNamespace(
        settings=Settings(model=source, served_model_name=name), loras=SimpleNamespace(has=loras.__contains__)
    )


FIRST, KLEIN = handler("first", "tiny:qwen-image-edit-plus"), handler("klein", "tiny:flux2-klein", ("anime",))
ROUTER = ModelRouter([FIRST, KLEIN])  # type: ignore[list-item]  # only .settings and .loras are read


def test_a_request_goes_to_the_model_it_names_by_name_or_source():
    assert ROUTER.pick({"model": "klein"}) is KLEIN
    assert ROUTER.pick({"model": "tiny:flux2-klein"}) is KLEIN
    assert ROUTER.pick(Form([Part("model", b" klein ")])) is KLEIN
    assert ROUTER.pick(Form([Part("model", b"klein"), Part("model", b"first")])) is KLEIN


def test_a_request_naming_a_lora_goes_to_the_model_it_belongs_to():
    assert ROUTER.pick({"model": "anime"}) is KLEIN
    assert ROUTER.pick(Form([Part("model", b"anime")])) is KLEIN


def test_anything_else_goes_to_the_default_whose_parser_refuses_it():
    for body in ({}, {"model": "nope"}, {"model": 3}, {"model": ["klein"]}, Form([Part("model", b"\xff")]), Form([])):
        assert ROUTER.pick(body) is FIRST
