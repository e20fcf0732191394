"""The chat completions endpoint: a scripted or planned reply, streamed (SSE) or whole."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from offline_model.planner import plan_chat, tokenize
from offline_model.responses import Responder, _StreamCut
from offline_model.scripting import ChatScript, Fail, Hang, Reply

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


@dataclass(frozen=True)
class _Completion:
    """One answer, decided before a byte is sent: the whole and the streamed form share it."""

    reply: Reply
    tokens: list[str]
    calls: list[tuple[str, str, str]]  # (id, name, JSON arguments)
    finish_reason: str
    completion_id: str
    model_name: str
    usage: dict[str, int]
    first_delay: float
    token_delay: float


class ChatEndpoint(Responder):
    """``POST …/chat/completions``. Hook: ``chat_script`` (what to answer this request)."""

    def chat_script(self, body: dict[str, Any]) -> ChatScript | None:
        """The scripted answer to this (valid) chat request; None lets the planner answer.

        The default takes the next item queued with ``OfflineModelServer.script_chat``.
        """
        return self.model.next_chat_script()

    def _chat(self, body: dict[str, Any] | None, raw: bytes) -> None:
        if body is None or not isinstance(body.get("messages"), list):
            self._send_error(400, "'messages' is a required property.", param="messages")
            return
        script = self.chat_script(body)
        if isinstance(script, Fail):
            self._send_fail(script)
            return
        if isinstance(script, Hang):
            self._hang(script)
            return
        completion = self._complete(script or plan_chat(body), body, raw)
        if not body.get("stream"):
            self._send_whole(completion)
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._send_stream(completion, include_usage)

    def _complete(self, reply: Reply, body: dict[str, Any], raw: bytes) -> _Completion:
        model = self.model
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
        return _Completion(
            reply, tokens, calls, finish_reason, completion_id, model_name, usage, first_delay,
            token_delay,
        )  # fmt: skip

    def _send_whole(self, answer: _Completion) -> None:
        # Simulate the generation time the stream would have taken.
        completion_tokens = answer.usage["completion_tokens"]
        self.pause(answer.first_delay + answer.token_delay * max(0, completion_tokens - 1))
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(answer.tokens) or None,
            "refusal": None,
        }
        if answer.calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in answer.calls
            ]
        payload = {
            "id": answer.completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": answer.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": answer.usage,
        }
        if answer.reply.cut_after is not None:
            # Promise the whole body, deliver half of it, hang up.
            content = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content[: len(content) // 2])
            self.wfile.flush()
            raise _StreamCut
        self.send_json(200, payload)

    def _send_stream(self, answer: _Completion, include_usage: bool) -> None:
        reply = answer.reply
        created = int(time.time())
        self.framing = reply.framing

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data: dict[str, Any] = {
                "id": answer.completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": answer.model_name,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                data["usage"] = None  # OpenAI sends an explicit null until the final chunk
            return json.dumps(data, ensure_ascii=self.framing == "lf")

        self._start_stream()
        self._send_event(chunk({"role": "assistant", "content": "", "refusal": None}))
        self.pause(answer.first_delay)
        sent_content = 0
        for position, delta in enumerate(_deltas(answer)):
            if reply.cut_after is not None and (
                sent_content >= reply.cut_after or "content" not in delta
            ):
                raise _StreamCut  # hang up: no terminating chunk, no [DONE]
            if position:
                self.pause(answer.token_delay)
            self._send_event(chunk(delta))
            sent_content += "content" in delta
        if reply.cut_after is not None:
            raise _StreamCut
        self._send_event(chunk({}, answer.finish_reason))
        if include_usage and reply.usage:
            final = {
                "id": answer.completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": answer.model_name,
                "system_fingerprint": None,
                "choices": [],
                "usage": answer.usage,
            }
            self._send_event(json.dumps(final))
        self._end_stream()


def _deltas(answer: _Completion) -> Iterator[dict[str, Any]]:
    """The stream's deltas after the role chunk: each token, then each tool call in pieces."""
    for token in answer.tokens:
        yield {"content": token}
    for index, (cid, name, args) in enumerate(answer.calls):
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
