"""The image generations endpoint: validated like OpenAI's, answered with offline drawings."""

from __future__ import annotations

import base64
import time
from typing import Any

from offline_model.drawing import IMAGE_SIZES, parse_size, render_image
from offline_model.responses import _Responder
from offline_model.scripting import Fail, Hang, ImageReply

IMAGE_MODEL = "offline-image"


class _ImagesHandler(_Responder):
    def _images(self, body: dict[str, Any] | None, raw: bytes) -> None:
        model = self.server.model
        script = model._next_image()
        if isinstance(script, Fail):
            self._send_fail(script)
            return
        if isinstance(script, Hang):
            self._hang(script)
            return
        reply = script or ImageReply()
        if body is None or not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            self._send_error(400, "'prompt' is a required property.", param="prompt")
            return
        try:
            width, height = parse_size(body.get("size"))
        except ValueError:
            allowed = ", ".join(repr(size) for size in IMAGE_SIZES)
            self._send_error(
                400,
                f"Invalid value: {body.get('size')!r}. Supported values are: {allowed}.",
                code="invalid_value",
                param="size",
            )
            return
        count = body.get("n") or 1
        if not isinstance(count, int) or not 1 <= count <= 10:
            self._send_error(
                400, "'n' must be between 1 and 10.", "invalid_request_error", "invalid_value", "n"
            )
            return
        response_format = reply.response_format or body.get("response_format") or "b64_json"
        if response_format not in ("b64_json", "url"):
            self._send_error(
                400,
                f"Invalid value: {response_format!r}. Supported values are: 'url' and 'b64_json'.",
                code="invalid_value",
                param="response_format",
            )
            return
        model._sleep(reply.delay)
        prompt = reply.prompt_override or body["prompt"]
        host = self.headers.get("Host") or f"{model.public_host}:{model.port}"
        data = []
        for index in range(count):
            # Extra images in one request get their own look; the first is the canonical one.
            png = render_image(prompt if index == 0 else f"{prompt}\n#{index}", width, height)
            item: dict[str, Any]
            if reply.url is not None:
                item = {"url": reply.url}
            elif response_format == "url":
                item = {"url": f"http://{host}/files/{model._store_file(png)}"}
            else:
                item = {"b64_json": base64.b64encode(png).decode("ascii")}
            if reply.revised_prompt is not None:
                item["revised_prompt"] = reply.revised_prompt
            data.append(item)
        self._send_json(
            200,
            {
                "created": int(time.time()),
                "data": data,
                "output_format": "png",
                "size": f"{width}x{height}",
            },
        )
