"""The chat completions endpoint: a scripted or planned reply, streamed (SSE) or whole."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterator
from typing import Any

from offline_model.planner import plan_chat, tokenize
from offline_model.responses import _Responder, _StreamCut
from offline_model.scripting import Fail, Hang

CHAT_MODEL = "offline-chat"


def _fragments(arguments: str) -> list[str]:
    """Split tool-call arguments into 2+ pieces, like OpenAI streams them."""
    if len(arguments) < 2:
        return [arguments] if arguments else []
    count = max(2, math.ceil(len(arguments) / 12))
    size = math.ceil(len(arguments) / count)
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _rough_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


class _ChatHandler(_Responder):
    def _chat(self, body: dict[str, Any] | None, raw: bytes) -> None:
        model = self.server.model
        if body is None or not isinstance(body.get("messages"), list):
            self._send_error(400, "'messages' is a required property.", param="messages")
            return
        script = model._next_chat()
        if isinstance(script, Fail):
            self._send_fail(script)
            return
        if isinstance(script, Hang):
            self._hang(script)
            return
        reply = script or plan_chat(body)
        tokens = reply.tokens if reply.tokens is not None else tokenize(reply.text)
        first_delay = (
            model.first_token_delay if reply.first_token_delay is None else reply.first_token_delay
        )
        token_delay = model.token_delay if reply.token_delay is None else reply.token_delay
        calls = [
            (
                call.id or f"call_{secrets.token_hex(12)}",
                call.name,
                call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments),
            )
            for call in reply.tool_calls
        ]
        finish_reason = reply.finish_reason or ("tool_calls" if calls else "stop")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(tokens):
            # As real servers do: stop at the limit, mid-sentence, and say so.
            tokens, calls, finish_reason = tokens[:limit], [], "length"
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        model_name = str(body.get("model") or CHAT_MODEL)
        prompt_tokens = _rough_tokens(raw.decode("utf-8", "replace"))
        completion_tokens = len(tokens) + sum(len(_fragments(args)) + 1 for *_, args in calls)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

        if not body.get("stream"):
            # Simulate the generation time the stream would have taken.
            model._sleep(first_delay + token_delay * max(0, completion_tokens - 1))
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(tokens) or None,
                "refusal": None,
            }
            if calls:
                message["tool_calls"] = [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                    for cid, name, args in calls
                ]
            payload = {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
            if reply.cut_after is not None:
                # Promise the whole body, deliver half of it, hang up.
                content = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content[: len(content) // 2])
                self.wfile.flush()
                raise _StreamCut
            self._send_json(200, payload)
            return

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())

        self.framing = reply.framing

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                data["usage"] = None  # OpenAI sends an explicit null until the final chunk
            return json.dumps(data, ensure_ascii=self.framing == "lf")

        def deltas() -> Iterator[dict[str, Any]]:
            for token in tokens:
                yield {"content": token}
            for index, (cid, name, args) in enumerate(calls):
                yield {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": cid,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
                for piece in _fragments(args):
                    yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}

        self._start_stream()
        self._send_event(chunk({"role": "assistant", "content": "", "refusal": None}))
        model._sleep(first_delay)
        sent_content = 0
        for position, delta in enumerate(deltas()):
            if reply.cut_after is not None and (
                sent_content >= reply.cut_after or "content" not in delta
            ):
                raise _StreamCut  # hang up: no terminating chunk, no [DONE]
            if position:
                model._sleep(token_delay)
            self._send_event(chunk(delta))
            sent_content += "content" in delta
        if reply.cut_after is not None:
            raise _StreamCut
        self._send_event(chunk({}, finish_reason))
        if include_usage and reply.usage:
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_name,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage,
            }
            self._send_event(json.dumps(final))
        self._end_stream()
