"""Edit and branch through real sockets: what the person sees and what the model is sent.

Every message points at the one before it on its path; an edit makes a sibling of
the question, a regenerate a sibling of the answer, and `branch.switch` picks the
branch the page shows and the model is sent (docs/protocol.md, "Edit and branch").
"""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from conversations.models import Conversation, GeneratedImage, Message
from offline_model import Hang, Reply
from tests.conftest import ChatSocket, text_of

pytestmark = pytest.mark.django_db(transaction=True)


async def ask(socket: ChatSocket, conversation_id: str | None, cid: str, text: str) -> list[Any]:
    await socket.send(
        "message.send", conversation_id=conversation_id, client_message_id=cid, text=text
    )
    return await socket.receive_until("assistant.completed")


async def two_exchanges(
    socket: ChatSocket, fake_openai: Any
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """A conversation: "first question" → "First answer.", "second question" → "Second answer."."""
    fake_openai.script_chat(Reply(text="First answer."), Reply(text="Second answer."))
    first = await ask(socket, None, "c1", "first question")
    conversation_id = first[0]["conversation_id"]
    second = await ask(socket, conversation_id, "c2", "second question")
    return conversation_id, first, second


def sent_to_model(fake_openai: Any) -> list[tuple[str, str]]:
    """The (role, content) of the last request the model got, system prompt left out."""
    messages = fake_openai.chat_requests()[-1].body["messages"]
    return [(m["role"], m["content"]) for m in messages if m["role"] != "system"]


async def active_texts(conversation_id: str) -> list[str]:
    rows = Message.objects.filter(conversation_id=conversation_id, active=True).order_by("id")
    return [m.text async for m in rows]


async def test_an_edit_branches_from_the_question_and_the_model_sees_only_the_new_branch(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    user = await database_sync_to_async(make_user)("alice")
    socket, other_tab = await connect(user), await connect(user)
    conversation_id, first, _second = await two_exchanges(socket, fake_openai)
    await other_tab.send("conversation.subscribe", conversation_id=conversation_id)
    await other_tab.receive_until("assistant.completed")
    original = first[0]["message_id"]

    fake_openai.script_chat(Reply(text="An answer to the edit."))
    await socket.send(
        "message.edit",
        conversation_id=conversation_id,
        message_id=original,
        client_message_id="e1",
        text="first question, better put",
    )
    frames = await socket.receive_until("assistant.completed")
    accepted = frames[0]
    assert accepted["type"] == "message.accepted" and accepted["duplicate"] is False
    edited, answer = accepted["message_id"], accepted["assistant_message_id"]
    assert accepted["replaces_message_id"] == original
    assert accepted["versions"] == [original, edited]
    assert text_of(frames, answer) == "An answer to the edit."

    # The model saw the edited question alone: not the old branch's messages.
    assert sent_to_model(fake_openai) == [("user", "first question, better put")]
    # The original is a sibling: the same parent (none: the first message).
    stored = await Message.objects.aget(pk=edited)
    assert stored.parent_id is None and stored.active
    assert await active_texts(conversation_id) == [
        "first question, better put",
        "An answer to the edit.",
    ]
    # Nothing was deleted: the old branch is all there, off the active path.
    assert await Message.objects.filter(conversation_id=conversation_id).acount() == 6

    # Another tab learns which message the edit replaces, and follows the new answer.
    seen = await other_tab.receive_until("assistant.completed")
    created = next(f for f in seen if f["type"] == "message.created")
    assert created["replaces_message_id"] == original
    assert created["versions"] == [original, edited]
    assert text_of(seen, answer) == "An answer to the edit."


async def test_editing_a_later_message_keeps_the_messages_before_it_in_the_context(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    socket = await connect(await database_sync_to_async(make_user)("alice"))
    conversation_id, first, second = await two_exchanges(socket, fake_openai)
    fake_openai.script_chat(Reply(text="Third answer."))
    await socket.send(
        "message.edit",
        conversation_id=conversation_id,
        message_id=second[0]["message_id"],
        client_message_id="e1",
        text="second question, again",
    )
    await socket.receive_until("assistant.completed")
    assert sent_to_model(fake_openai) == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question, again"),
    ]
    edited = await Message.objects.aget(client_message_id="e1")
    assert edited.parent_id == first[0]["assistant_message_id"]


async def test_switching_back_to_the_original_branch_shows_it_and_the_model_sees_it(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    user = await database_sync_to_async(make_user)("alice")
    socket, other_tab = await connect(user), await connect(user)
    conversation_id, first, _second = await two_exchanges(socket, fake_openai)
    original = first[0]["message_id"]
    fake_openai.script_chat(Reply(text="An answer to the edit."))
    await socket.send(
        "message.edit",
        conversation_id=conversation_id,
        message_id=original,
        client_message_id="e1",
        text="edited",
    )
    edited = (await socket.receive_until("assistant.completed"))[0]["message_id"]
    await other_tab.send("conversation.subscribe", conversation_id=conversation_id)
    await other_tab.receive_until("assistant.completed")

    await socket.send("branch.switch", conversation_id=conversation_id, message_id=original)
    switched = (await socket.receive_until("branch.switched"))[-1]
    assert switched["message_id"] == original
    assert switched["replaces_message_id"] == edited
    # From the switch point to the end of the branch, as it was left.
    assert [(m["role"], m["text"]) for m in switched["messages"]] == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
        ("assistant", "Second answer."),
    ]
    assert switched["messages"][0]["versions"] == [original, edited]
    assert switched["messages"][1]["versions"] == [first[0]["assistant_message_id"]]
    assert (
        "Second answer." in switched["html"] and f'data-message-id="{original}"' in switched["html"]
    )
    # Every follower re-renders: the other tab got the same frame.
    assert (await other_tab.receive_until("branch.switched"))[-1] == switched

    fake_openai.script_chat(Reply(text="Fourth answer."))
    await ask(socket, conversation_id, "c3", "and a third question")
    assert sent_to_model(fake_openai) == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
        ("assistant", "Second answer."),
        ("user", "and a third question"),
    ]

    # Switching to the branch already shown changes nothing and says so.
    await socket.send("branch.switch", conversation_id=conversation_id, message_id=original)
    again = await socket.receive_until("branch.switched")
    assert again[-1]["replaces_message_id"] is None and again[-1]["messages"] == []


async def test_regenerate_keeps_the_old_answer_as_a_version_and_switching_brings_it_back(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    socket = await connect(await database_sync_to_async(make_user)("alice"))
    fake_openai.script_chat(Reply(text="The first version."), Reply(text="The second version."))
    first = await ask(socket, None, "c1", "tell me something")
    conversation_id, question = first[0]["conversation_id"], first[0]["message_id"]
    old = first[0]["assistant_message_id"]
    await socket.send("turn.regenerate", conversation_id=conversation_id)
    frames = await socket.receive_until("assistant.completed")
    regenerating = frames[0]
    new = regenerating["assistant_message_id"]
    assert regenerating["replaces_message_id"] == old
    assert regenerating["versions"] == [old, new]
    kept = await Message.objects.aget(pk=old)
    assert (kept.text, kept.active, kept.parent_id) == ("The first version.", False, question)

    await socket.send("branch.switch", conversation_id=conversation_id, message_id=old)
    switched = (await socket.receive_until("branch.switched"))[-1]
    assert switched["replaces_message_id"] == new
    assert [(m["id"], m["text"], m["versions"]) for m in switched["messages"]] == [
        (old, "The first version.", [old, new])
    ]
    fake_openai.script_chat(Reply(text="Sure."))
    await ask(socket, conversation_id, "c2", "go on")
    assert sent_to_model(fake_openai) == [
        ("user", "tell me something"),
        ("assistant", "The first version."),
        ("user", "go on"),
    ]


async def test_a_regenerated_drawing_keeps_its_image_and_deleting_the_chat_removes_every_version(
    make_user: Any, connect: Any, fake_openai: Any, local_storage: Any
) -> None:
    user = await database_sync_to_async(make_user)("alice")
    socket = await connect(user)
    first = await ask(socket, None, "c1", "draw a lighthouse at dusk")
    conversation_id = first[0]["conversation_id"]
    image = await GeneratedImage.objects.aget()
    fake_openai.script_chat(Reply(text="No picture this time."))
    await socket.send("turn.regenerate", conversation_id=conversation_id)
    await socket.receive_until("assistant.completed")
    # The old version keeps its picture: it is still shown when switched to.
    assert (local_storage / image.file.name).exists()
    assert await GeneratedImage.objects.filter(pk=image.pk).aexists()

    client = Client()
    await database_sync_to_async(client.force_login)(user)
    response = await database_sync_to_async(client.post)(f"/c/{conversation_id}/delete/")
    assert response.status_code == 302
    assert not await Message.objects.filter(conversation_id=conversation_id).aexists()
    assert not await GeneratedImage.objects.aexists()
    assert not (local_storage / image.file.name).exists()


async def test_another_users_messages_are_not_found_and_nothing_changes(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    alice = await connect(await database_sync_to_async(make_user)("alice"))
    conversation_id, first, _ = await two_exchanges(alice, fake_openai)
    bob = await connect(await database_sync_to_async(make_user)("bob"))
    bobs = await ask(bob, None, "b1", "my own chat")
    bobs_conversation = bobs[0]["conversation_id"]
    alices_message = first[0]["message_id"]

    attempts: list[tuple[str, dict[str, Any]]] = [
        # Alice's conversation: not found, as if it did not exist.
        (
            "message.edit",
            dict(conversation_id=conversation_id, message_id=alices_message, text="x"),
        ),
        ("branch.switch", dict(conversation_id=conversation_id, message_id=alices_message)),
        # Bob's own conversation with Alice's message id: not found either.
        (
            "message.edit",
            dict(conversation_id=bobs_conversation, message_id=alices_message, text="x"),
        ),
        ("branch.switch", dict(conversation_id=bobs_conversation, message_id=alices_message)),
        # An answer is not a message one can edit.
        (
            "message.edit",
            dict(
                conversation_id=bobs_conversation,
                message_id=bobs[0]["assistant_message_id"],
                text="x",
            ),
        ),
    ]
    for number, (kind, fields) in enumerate(attempts):
        if kind == "message.edit":
            fields["client_message_id"] = f"x{number}"
        await bob.send(kind, **fields)
        refused = await bob.receive()
        assert (refused["type"], refused["code"]) == ("error", "not_found"), kind
    assert await active_texts(conversation_id) == [
        "first question",
        "First answer.",
        "second question",
        "Second answer.",
    ]
    assert await Message.objects.acount() == 6


async def test_edit_and_switch_are_refused_while_an_answer_streams(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    socket = await connect(await database_sync_to_async(make_user)("alice"))
    fake_openai.script_chat(Reply(text="The first version."), Reply(text="The second version."))
    first = await ask(socket, None, "c1", "tell me something")
    conversation_id, question = first[0]["conversation_id"], first[0]["message_id"]
    old = first[0]["assistant_message_id"]
    await socket.send("turn.regenerate", conversation_id=conversation_id)
    await socket.receive_until("assistant.completed")

    fake_openai.script_chat(Hang(30))
    await socket.send(
        "message.send", conversation_id=conversation_id, client_message_id="c2", text="more"
    )
    await socket.receive_until("assistant.started")
    before = [(m.pk, m.active) async for m in Message.objects.order_by("id")]

    await socket.send(
        "message.edit",
        conversation_id=conversation_id,
        message_id=question,
        client_message_id="e1",
        text="edited while streaming",
    )
    refused = await socket.receive_until("error")
    assert (refused[-1]["code"], refused[-1]["ref"]) == ("turn_in_progress", "e1")
    await socket.send("branch.switch", conversation_id=conversation_id, message_id=old)
    assert (await socket.receive_until("error"))[-1]["code"] == "turn_in_progress"
    assert [(m.pk, m.active) async for m in Message.objects.order_by("id")] == before

    await socket.send("turn.cancel", conversation_id=conversation_id)
    await socket.receive_until("assistant.completed")


async def test_a_resent_edit_is_the_same_edit(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    socket = await connect(await database_sync_to_async(make_user)("alice"))
    conversation_id, first, _ = await two_exchanges(socket, fake_openai)
    fake_openai.script_chat(Reply(text="Edited answer."))
    edit = dict(
        conversation_id=conversation_id,
        message_id=first[0]["message_id"],
        client_message_id="e1",
        text="edited",
    )
    await socket.send("message.edit", **edit)
    accepted = (await socket.receive_until("assistant.completed"))[0]
    await socket.send("message.edit", **edit)
    again = await socket.receive_until("assistant.completed")
    assert again[0]["duplicate"] is True
    assert again[0]["message_id"] == accepted["message_id"]
    assert again[0]["versions"] == accepted["versions"]
    assert await Message.objects.filter(text="edited").acount() == 1
    assert len(fake_openai.chat_requests()) == 3


async def test_bad_edit_and_switch_frames_get_typed_errors(
    make_user: Any, connect: Any, fake_openai: Any, settings: Any
) -> None:
    socket = await connect(await database_sync_to_async(make_user)("alice"))
    conversation = await Conversation.objects.acreate(
        user=await database_sync_to_async(make_user)("carol")
    )
    cases = [
        (
            {"type": "message.edit", "conversation_id": str(conversation.pk), "message_id": 1},
            "bad_frame",
        ),
        (
            {"type": "branch.switch", "conversation_id": str(conversation.pk), "message_id": "1"},
            "bad_frame",
        ),
        (
            {
                "type": "message.edit",
                "conversation_id": str(conversation.pk),
                "message_id": 1,
                "client_message_id": "e",
                "text": "x" * (settings.MAX_MESSAGE_CHARS + 1),
            },
            "message_too_long",
        ),
    ]
    for frame, code in cases:
        await socket.send(frame.pop("type"), **frame)
        assert (await socket.receive())["code"] == code


async def test_after_an_edit_catch_up_and_a_reload_show_the_active_branch(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    user = await database_sync_to_async(make_user)("alice")
    socket = await connect(user)
    conversation_id, _first, second = await two_exchanges(socket, fake_openai)
    fake_openai.script_chat(Reply(text="Answer to the edit."))
    await socket.send(
        "message.edit",
        conversation_id=conversation_id,
        message_id=second[0]["message_id"],
        client_message_id="e1",
        text="second question, edited",
    )
    accepted = (await socket.receive_until("assistant.completed"))[0]

    # A client that had the old answer catches up on the active branch's answer.
    late = await connect(user)
    await late.send(
        "conversation.subscribe",
        conversation_id=conversation_id,
        message_id=second[0]["assistant_message_id"],
        offset=3,
    )
    frames = await late.receive_until("assistant.completed")
    assert frames[0]["message_id"] == accepted["assistant_message_id"]
    assert text_of(frames, accepted["assistant_message_id"]) == "Answer to the edit."

    # The page shows the active branch, with "2 / 2" on the edited question.
    client = Client()
    await database_sync_to_async(client.force_login)(user)
    page = (await database_sync_to_async(client.get)(f"/c/{conversation_id}/")).content.decode()
    assert "Answer to the edit." in page and "second question, edited" in page
    assert "Second answer." not in page and ">second question<" not in page
    assert "2 / 2" in page and "First answer." in page


async def test_editing_a_message_of_a_branch_left_behind_makes_its_path_the_active_one(
    make_user: Any, connect: Any, fake_openai: Any
) -> None:
    socket = await connect(await database_sync_to_async(make_user)("alice"))
    conversation_id, first, second = await two_exchanges(socket, fake_openai)
    fake_openai.script_chat(Reply(text="Answer one."), Reply(text="Answer two."))
    edit = dict(conversation_id=conversation_id, message_id=first[0]["message_id"])
    await socket.send("message.edit", **edit, client_message_id="e1", text="first, edited")
    await socket.receive_until("assistant.completed")
    # A tab that still shows the first branch edits its second question.
    stale = dict(conversation_id=conversation_id, message_id=second[0]["message_id"])
    await socket.send("message.edit", **stale, client_message_id="e2", text="second, edited")
    await socket.receive_until("assistant.completed")
    assert await active_texts(conversation_id) == [
        "first question",
        "First answer.",
        "second, edited",
        "Answer two.",
    ]
    assert sent_to_model(fake_openai) == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second, edited"),
    ]
