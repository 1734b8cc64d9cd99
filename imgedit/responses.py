"""The success body of ``POST /v1/images/edits`` (OpenAI's ``ImagesResponse``).

Metadata fields carry only concrete values from OpenAI's allowed sets, so the
body validates under the ``openai`` SDK's strict response validation.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from starlette.responses import Response

from imgedit.encode import ResolvedBackground
from imgedit.request import OutputFormat
from imgedit.sizing import Size

SEEDS_HEADER = "x-imgedit-seeds"


def images_response(
    encoded: Sequence[bytes],
    *,
    created: int,
    output_format: OutputFormat,
    size: Size,
    background: ResolvedBackground,
    seeds: Sequence[int],
) -> Response:
    """A 200 JSON response with one ``b64_json`` item per encoded image.

    The seed of each image is listed, in order, in the ``x-imgedit-seeds`` header.
    """
    body = {
        "created": created,
        "data": [
            {"b64_json": base64.b64encode(image).decode("ascii"), "url": None, "revised_prompt": None}
            for image in encoded
        ],
        "output_format": output_format,
        "size": str(size),
        "background": background,
    }
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        media_type="application/json",
        headers={SEEDS_HEADER: ",".join(str(seed) for seed in seeds)},
    )
