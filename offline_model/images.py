"""The image generations and edits endpoints: validated like OpenAI's, answered offline.

Generations are drawings of the prompt (``drawing``), edits transforms of the
uploaded sources (``editing``); both honour ``n`` and, with ``stream``,
send ``partial_images`` previews in OpenAI's event format.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

from PIL import Image

from offline_model.drawing import IMAGE_SIZES, parse_size, render_image
from offline_model.editing import edit_image, partial_images
from offline_model.multipart import UploadedFile
from offline_model.responses import Responder
from offline_model.scripting import Fail, Hang, ImageReply, ImageScript

IMAGE_MODEL = "offline-image"


class ImagesEndpoint(Responder):
    """``POST …/images/generations`` and ``POST …/images/edits`` (multipart).

    Hooks: ``image_script`` (what to answer this request), ``render`` (the PNG for a
    prompt), ``edit`` (the PNG for an edit), ``before_image_response`` /
    ``after_image_response`` (around the 200's bytes).
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

    def edit(
        self,
        sources: list[bytes],
        prompt: str,
        size: tuple[int, int] | None,
        mask: bytes | None,
        variant: int,
    ) -> bytes:
        """The PNG for an edit request; the default is ``editing.edit_image``."""
        return edit_image(sources, prompt, size, mask=mask, variant=variant)

    def _images(self, body: dict[str, Any] | None) -> None:
        self._image_call(body, None)

    def _edits(self, body: dict[str, Any] | None, files: list[UploadedFile]) -> None:
        self._image_call(body, files)

    def _image_call(self, body: dict[str, Any] | None, files: list[UploadedFile] | None) -> None:
        """Generations (``files`` None) and edits (multipart, with the uploaded files)."""
        model = self.model
        editing = files is not None
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
        sources = [f.data for f in files or [] if f.field in ("image", "image[]")]
        masks = [f.data for f in files or [] if f.field == "mask"]
        if editing and not sources:
            self._send_error(400, "'image' is a required property.", param="image")
            return
        if editing and not all(_is_image(data) for data in [*sources, *masks]):
            self._send_error(
                400,
                "Invalid image file. Supported formats are 'png', 'webp' and 'jpg'.",
                code="invalid_image_file",
                param="image",
            )
            return
        try:
            if editing and body.get("size") in (None, "", "auto"):
                width, height = _size_of(sources[0])
            else:
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
        count = _integer(body.get("n"), 1)
        if count is None or not 1 <= count <= 10:
            self._send_error(
                400, "'n' must be between 1 and 10.", "invalid_request_error", "invalid_value", "n"
            )
            return
        partials = _integer(body.get("partial_images"), 0)
        streaming = body.get("stream") in (True, "true", "True")
        if streaming and (partials is None or not 0 <= partials <= 3):
            self._send_error(
                400,
                "'partial_images' must be between 0 and 3.",
                "invalid_request_error",
                "invalid_value",
                "partial_images",
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
        pngs = []
        for index in range(count):
            if editing:
                mask = masks[0] if masks else None
                pngs.append(self.edit(sources, prompt, (width, height), mask, index))
            else:
                # Extra images in one request get their own look; the first is the canonical one.
                pngs.append(
                    self.render(prompt if index == 0 else f"{prompt}\n#{index}", width, height)
                )
        if streaming:
            self._stream_images(
                pngs, partials or 0, editing, f"{width}x{height}", reply.revised_prompt
            )
            return
        host = self.headers.get("Host") or f"{model.public_host}:{model.port}"
        data: list[dict[str, str]] = []
        for png in pngs:
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

    def _stream_images(
        self,
        pngs: list[bytes],
        partials: int,
        editing: bool,
        size: str,
        revised_prompt: str | None = None,
    ) -> None:
        """OpenAI's image streaming: for each image its partial images, then its completed event.

        ``event: image_generation.partial_image`` (``image_edit.…`` for edits)
        with the base64 PNG and ``partial_image_index``, then ``….completed``.
        A scripted ``revised_prompt`` rides on the completed event (OpenAI's have
        none; a gateway's may).
        """
        prefix = "image_edit" if editing else "image_generation"
        common = {
            "background": "opaque",
            "output_format": "png",
            "quality": "medium",
            "size": size,
        }
        self._start_stream()
        for png in pngs:
            for index, preview in enumerate(partial_images(png, partials)):
                self.pause(self.model.preview_delay)
                self._send_named_event(
                    f"{prefix}.partial_image",
                    {
                        "type": f"{prefix}.partial_image",
                        "b64_json": base64.b64encode(preview).decode("ascii"),
                        "created_at": int(time.time()),
                        "partial_image_index": index,
                        **common,
                    },
                )
            self.pause(self.model.preview_delay)
            self._send_named_event(
                f"{prefix}.completed",
                {
                    "type": f"{prefix}.completed",
                    "b64_json": base64.b64encode(png).decode("ascii"),
                    "created_at": int(time.time()),
                    **({"revised_prompt": revised_prompt} if revised_prompt is not None else {}),
                    "usage": {
                        "input_tokens": 50,
                        "input_tokens_details": {"image_tokens": 40, "text_tokens": 10},
                        "output_tokens": 272,
                        "total_tokens": 322,
                    },
                    **common,
                },
            )
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_named_event(self, name: str, data: dict[str, Any]) -> None:
        payload = json.dumps(data)
        self.before_event(payload)
        chunk = f"event: {name}\ndata: {payload}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.flush()


def _integer(value: object, default: int) -> int | None:
    """A JSON number or a multipart field's text as an int (None if neither)."""
    if value in (None, ""):
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _is_image(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()
    except Exception:
        return False
    return True


def _size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as picture:
        return picture.size
