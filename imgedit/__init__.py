"""imgedit: an OpenAI-compatible image-edit server for diffusers pipelines."""

__version__ = "0.1.0"
