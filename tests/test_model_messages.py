"""What the model is sent, rebuilt from stored rows: segments, tool rounds, shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conversations import llm
from conversations.models import Conversation, Message, ToolInvocation
from tests.chats import attachment_row

pytestmark = pytest.mark.django_db


def answer_with_calls(make_user: Any, text: str, offsets: list[int]) -> Message:
    conversation = Conversation.objects.create(user=make_user())
    question = conversation.messages.create(role="user", text="draw two")
    answer = conversation.messages.create(role="assistant", text=text, reply_to=question)
    for n, offset in enumerate(offsets):
        ToolInvocation.objects.create(
            message=answer,
            call_id=f"call_{n}",
            name="generate_image",
            arguments={"prompt": f"picture {n}"},
            text_offset=offset,
            status="complete",
            result={"status": "ok", "image_id": f"id-{n}", "prompt": f"picture {n}"},
        )
    return Message.objects.prefetch_related("tool_invocations__images").get(pk=answer.pk)


def test_segments_cut_the_text_at_each_tool_call(make_user: Any) -> None:
    answer = answer_with_calls(make_user, "Here: and there. Done.", [5, 16])
    assert [(text, inv.call_id if inv else None) for text, inv in answer.segments()] == [
        ("Here:", "call_0"),
        (" and there.", "call_1"),
        (" Done.", None),
    ]


def test_an_offset_past_the_text_is_clamped_not_lost(make_user: Any) -> None:
    answer = answer_with_calls(make_user, "Short.", [99])
    assert [text for text, _ in answer.segments()] == ["Short.", ""]


def test_a_tool_round_becomes_call_then_result_with_string_content(make_user: Any) -> None:
    answer = answer_with_calls(make_user, "Let me draw.Here it is.", [12])
    messages = llm.model_messages([answer.reply_to, answer])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    call, result, after = messages[2], messages[3], messages[4]
    assert call["content"] == "Let me draw."
    assert call["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "generate_image", "arguments": '{"prompt": "picture 0"}'},
        }
    ]
    assert (result["role"], result["tool_call_id"]) == ("tool", "call_0")
    assert isinstance(result["content"], str)  # a string, as every server accepts
    assert json.loads(result["content"]) == {
        "status": "ok",
        "image_id": "id-0",
        "prompt": "picture 0",
    }
    assert after == {"role": "assistant", "content": "Here it is."}


def test_two_calls_in_a_row_are_one_round_and_no_content_is_null(make_user: Any) -> None:
    answer = answer_with_calls(make_user, "Done.", [0, 0])
    messages = llm.model_messages([answer.reply_to, answer])
    rounds = [m for m in messages if m.get("tool_calls")]
    assert len(rounds) == 1 and len(rounds[0]["tool_calls"]) == 2
    assert all(m["content"] is not None for m in messages)
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == ["call_0", "call_1"]


def test_no_url_or_bytes_reach_the_model(make_user: Any) -> None:
    answer = answer_with_calls(make_user, "x", [1])
    sent = json.dumps(llm.model_messages([answer.reply_to, answer]))
    assert "/images/" not in sent and "base64" not in sent and "http" not in sent


def test_the_request_body_is_what_the_sdk_would_send_itself(make_user: Any) -> None:
    """stream_chat posts its body as built (conversations/llm.py says why): the SDK's
    own create() would walk it against its types first. For every shape we send
    (tool rounds, image parts of a vision question, the tools), that walk must
    change nothing, or the bypass would send something create() would not."""
    from openai._utils import maybe_transform
    from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming

    from conversations import images

    answer = answer_with_calls(make_user, "Let me draw.Here it is.", [12])
    messages = llm.model_messages([answer.reply_to, answer])
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this one\n\n[image attachment 1]"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            ],
        }
    )
    body = llm.chat_request(messages, images.tool_schemas())
    assert body["tools"] and body["messages"][2]["tool_calls"]
    sent = maybe_transform(body, CompletionCreateParamsStreaming)  # create()'s, sync
    assert sent == body


def test_the_history_reads_only_what_it_has_and_sends_what_a_full_read_sends(
    make_user: Any, django_assert_num_queries: Any
) -> None:
    """A turn start's history: the tool calls and attachments are read only where
    some message has them (each query costs every follow-up; issue 12), and the
    model is sent exactly what reading everything would send."""

    def everything(conversation: Conversation) -> list[dict[str, Any]]:
        rows = conversation.messages.filter(active=True).prefetch_related(
            "tool_invocations__images__parents", "attachments"
        )
        return llm.model_messages(list(rows.order_by("id")))

    answer = answer_with_calls(make_user, "Let me draw.Here it is.", [12])
    conversation = answer.conversation
    ToolInvocation.objects.filter(message=answer).delete()
    follow_up = conversation.messages.create(role="user", text="and a boat?", reply_to=None)
    with django_assert_num_queries(1):  # text only: the messages, nothing else
        history = conversation.history()
    assert llm.model_messages(history) == everything(conversation)
    assert [m["content"] for m in llm.model_messages(history)[1:]] == [
        "draw two",
        "Let me draw.Here it is.",
        "and a boat?",
    ]

    ToolInvocation.objects.create(
        message=answer,
        call_id="call_0",
        name="generate_image",
        arguments={"prompt": "a kite"},
        text_offset=12,
        status="complete",
        result={"status": "ok", "image_id": "id-0", "prompt": "a kite"},
    )
    with django_assert_num_queries(3):  # + the calls and their images
        history = conversation.history()
    sent = llm.model_messages(history)
    assert sent == everything(conversation) and sent[3]["tool_call_id"] == "call_0"

    upload = attachment_row(follow_up)
    with django_assert_num_queries(4):  # + the questions' attachments
        history = conversation.history()
    sent = llm.model_messages(history)
    assert sent == everything(conversation) and str(upload.pk) in sent[-1]["content"]
