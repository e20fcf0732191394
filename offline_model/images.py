"""The image generations endpoint: validated like OpenAI's, answered with offline drawings."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from offline_model.drawing import IMAGE_SIZES, parse_size, render_image
from offline_model.responses import Responder
from offline_model.scripting import Fail, Hang, ImageReply, ImageScript

IMAGE_MODEL = "offline-image"


class ImagesEndpoint(Responder):
    """``POST …/images/generations``.

    Hooks: ``image_script`` (what to answer this request), ``render`` (the PNG for a
    prompt), ``before_image_response`` / ``after_image_response`` (around the 200's bytes).
    """

    def image_script(self, body: dict[str, Any] | None) -> ImageScript | None:
        """The scripted answer to this image request; None draws the requested picture.

        Called first, before the body is validated (a scripted ``Fail`` answers even a bad
        request). The default takes the next item queued with ``script_images``.
        """
        return self.model.next_image_script()

    def render(self, prompt: str, width: int, height: int) -> bytes:
        """The PNG for ``prompt`` at this size; the default is ``drawing.render_image``."""
        return render_image(prompt, width, height)

    def before_image_response(self, content: bytes) -> None:
        """Called just before a successful image response's bytes (JSON) are written."""

    def after_image_response(self, content: bytes) -> None:
        """Called just after a successful image response's bytes were written."""

    def _images(self, body: dict[str, Any] | None) -> None:
        model = self.model
        script = self.image_script(body)
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
        self.pause(reply.delay)
        prompt = reply.prompt_override or body["prompt"]
        host = self.headers.get("Host") or f"{model.public_host}:{model.port}"
        data: list[dict[str, str]] = []
        for index in range(count):
            # Extra images in one request get their own look; the first is the canonical one.
            png = self.render(prompt if index == 0 else f"{prompt}\n#{index}", width, height)
            item: dict[str, str]
            if reply.url is not None:
                item = {"url": reply.url}
            elif response_format == "url":
                item = {"url": f"http://{host}/files/{model.store_file(png)}"}
            else:
                item = {"b64_json": base64.b64encode(png).decode("ascii")}
            if reply.revised_prompt is not None:
                item["revised_prompt"] = reply.revised_prompt
            data.append(item)
        payload = {
            "created": int(time.time()),
            "data": data,
            "output_format": "png",
            "size": f"{width}x{height}",
        }
        content = json.dumps(payload).encode()
        self.before_image_response(content)
        self._send_bytes(200, content, "application/json")
        self.after_image_response(content)
