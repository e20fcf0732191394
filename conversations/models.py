"""Conversations, their messages, tool invocations and generated images.

One assistant Message is one turn: its text grows as the model streams, and the
tool invocations of that turn hang off it, each at the character offset of the
text where the model called it. That keeps a single, monotonic offset space per
message (what the websocket protocol's resume works on) while the page and the
history sent back to the model can still interleave text and images in order.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, models, transaction
from django.db.models import OuterRef, Q, Subquery
from django.db.models.constants import LOOKUP_SEP
from django.db.models.functions import Coalesce
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone

from conversations import instances, rendering
from conversations.protocol import ChatimgError, text_of

log = logging.getLogger(__name__)


INTERRUPTED_MESSAGE = "The server stopped while this answer was being written."


class TurnInProgress(ChatimgError):
    """The conversation already has an answer streaming."""

    def __init__(self) -> None:
        super().__init__("turn_in_progress", "Wait for the current answer to finish, or stop it.")


class NothingToRegenerate(ChatimgError):
    """The conversation does not end with an answer."""

    def __init__(self) -> None:
        super().__init__("nothing_to_regenerate", "There is no answer to redo.")


class NothingToContinue(ChatimgError):
    """The conversation does not end with an answer cut off by its length limit."""

    def __init__(self) -> None:
        super().__init__(
            "nothing_to_continue", "The last answer was not cut off; there is nothing to add."
        )


class NotFound(ChatimgError):
    """No such conversation for this user: the same answer for someone else's."""

    def __init__(self) -> None:
        super().__init__("not_found", "No such conversation.")


class MessageNotFound(ChatimgError):
    """No such message in this conversation (the same for one of another conversation)."""

    def __init__(self) -> None:
        super().__init__("not_found", "No such message.")


class TurnStart(NamedTuple):
    """What storing a question did (Conversation.objects.start_turn)."""

    conversation: Conversation
    question: Message
    answer: Message
    created: bool  # False: a resend of a question stored already (nothing new starts)
    history: list[Message] | None  # the model's context, oldest first, when created


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def owned(self, user: Any, pk: uuid.UUID) -> Conversation:
        """The user's conversation, or NotFound (for another user's too: nothing leaks)."""
        conversation = self.filter(pk=pk, user=user).first()
        if conversation is None:
            raise NotFound
        return conversation

    def start_turn(
        self,
        user: Any,
        conversation_id: uuid.UUID | None,
        client_message_id: str,
        text: str,
        attachments: list[uuid.UUID] | None = None,
    ) -> TurnStart:
        """Store a question and open its answer, and read the model's context for it.

        A send without a conversation starts one (titled by the message),
        unless it is a resend of such a send; see Conversation.begin_turn.
        A refused attachment stores nothing, not even the new conversation.
        The context is read here, in the same trip to the database thread, so
        that the answer's request to the model needs no trip of its own (with
        many sends at once, each trip queues behind every other send's).
        """
        with transaction.atomic():
            conversation, fresh = self._conversation_for(
                user, conversation_id, client_message_id, text
            )
            question, answer, created = conversation.begin_turn(
                text, client_message_id, fresh=fresh, attachments=attachments
            )
        history: list[Message] | None = None
        if created:
            # A new conversation's context is its question: nothing to read back.
            history = [question] if fresh else conversation.history()
        return TurnStart(conversation, question, answer, created, history)

    def _conversation_for(
        self, user: Any, conversation_id: uuid.UUID | None, client_message_id: str, text: str
    ) -> tuple[Conversation, bool]:
        """The conversation a send goes to, and whether it was created for it (titled by it)."""
        if conversation_id is not None:
            return self.owned(user, conversation_id), False
        earlier = (
            Message.objects.filter(conversation__user=user, client_message_id=client_message_id)
            .select_related("conversation")
            .first()
        )
        if earlier is not None:  # a resend of a send that started a conversation
            return earlier.conversation, False
        return self.create(user=user, title=Conversation.title_from(text)), True

    def opened(
        self, user: Any, pk: uuid.UUID, *, limit: int, before: int | None = None
    ) -> tuple[Conversation, list[Message], bool] | None:
        """The user's conversation and the latest `limit` messages of its active
        branch (older than `before`, a message id, when given), oldest first, each
        with its `versions`, and whether earlier ones exist. None: not the
        user's, or missing.

        A fixed number of queries whatever the length: the messages with their
        conversation (one JOIN; a query of its own only when no message
        matched) and one prefetch each for the invocations and their images.
        What only some chats have costs a query only where the page has it (the
        messages' and images' rows say whether, in EXISTS columns of the same
        queries): the branch tree for "2 / 3", the images' parents ("edited
        from"), the questions' attachments.
        """
        rows = Message.objects.filter(conversation_id=pk, conversation__user=user, active=True)
        if before is not None:
            rows = rows.filter(pk__lt=before)
        images = GeneratedImage.objects.annotate(
            edited=models.Exists(
                GeneratedImage.parents.through.objects.filter(from_generatedimage=OuterRef("pk"))
            )
        )
        messages = list(
            rows.select_related("conversation")
            .annotate(branched=_has_siblings(), attached=_has_attachments())
            .prefetch_related(models.Prefetch("tool_invocations__images", queryset=images))
            .order_by("-id")[: limit + 1]
        )
        earlier = len(messages) > limit
        messages = messages[:limit][::-1]
        if not messages:
            conversation = self.filter(pk=pk, user=user).first()
            return None if conversation is None else (conversation, [], False)
        conversation = messages[0].conversation
        for message in messages:
            message.conversation = conversation  # one instance, not one per row
        _prefetch_where(messages, "attachments", lambda message: message.attached)
        shown = [
            image
            for m in messages
            for call in m.tool_invocations.all()
            for image in call.images.all()
        ]
        _prefetch_where(shown, "parents", lambda image: image.edited)
        branched = any(m.branched for m in messages)  # type: ignore[attr-defined]
        return (
            conversation,
            _with_versions(messages, conversation._tree() if branched else {}),
            earlier,
        )

    def page(
        self, cursor: tuple[Any, uuid.UUID] | None, size: int
    ) -> tuple[list[Conversation], tuple[Any, uuid.UUID] | None]:
        """One page, newest first, and the cursor of the next page (or None).

        Keyset pagination on (updated_at, id): a conversation that moves to the
        top while someone scrolls is neither repeated nor skipped.
        """
        rows = self.only("id", "title", "updated_at").order_by("-updated_at", "-id")
        if cursor is not None:
            at, pk = cursor
            rows = rows.filter(Q(updated_at__lt=at) | Q(updated_at=at, id__lt=pk))
        page = list(rows[: size + 1])
        if len(page) <= size:
            return page, None
        page = page[:size]
        return page, (page[-1].updated_at, page[-1].id)


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"], name="conv_user_recent")]

    def __str__(self) -> str:
        return self.title or f"Conversation {str(self.id)[:8]}"

    def get_absolute_url(self) -> str:
        return reverse("conversation", args=[self.id])

    def rename(self, title: str) -> str:
        """Set a title the user chose; returns it cleaned. Raises ValueError if unusable."""
        title = " ".join(title.split())
        limit = Conversation._meta.get_field("title").max_length or 200
        if not title or len(title) > limit:
            raise ValueError(f"A title is 1 to {limit} characters.")
        # Not save(): renaming must not move the conversation to the top of the list.
        Conversation.objects.filter(pk=self.pk).update(title=title)
        self.title = title
        return title

    def history(self) -> list[Message]:
        """The finished messages that make up the model's context, oldest first.

        The active branch only (docs/architecture.md, "Edit and branch"): the
        versions an edit or a regenerate left behind are never sent.
        """
        recent = list(
            self.messages.filter(active=True)
            .exclude(status=Message.Status.STREAMING)
            .annotate(called=_has_tool_calls(), attached=_has_attachments())
            .order_by("-id")[: settings.HISTORY_MESSAGES]
        )[::-1]
        # What the model is sent of each (llm.model_messages): a question's
        # attachments, an answer's tool calls with their images. Read only where
        # the history has some (a turn start's queries: docs/benchmarks.md).
        questions = [m for m in recent if m.role == Message.Role.USER]
        answers = [m for m in recent if m.role != Message.Role.USER]
        _prefetch_where(questions, "attachments", lambda m: m.attached)
        _prefetch_where(answers, "tool_invocations__images__parents", lambda m: m.called)
        return recent

    def latest_answer(self, message_id: int | None = None) -> Message | None:
        """The answer a client catching up should get (images prefetched).

        The client's `message_id` while it is on the active branch; once it
        was regenerated, edited away or switched from while the client was
        away, the latest answer of the active branch.
        """
        answers = self.messages.filter(role=Message.Role.ASSISTANT, active=True).prefetch_related(
            "tool_invocations__images__parents"
        )
        latest = answers.order_by("-id").first()
        if message_id is not None and latest is not None and latest.pk != message_id:
            return answers.filter(pk=message_id).first() or latest
        return latest

    def catch_up(self, message_id: int | None) -> tuple[Message | None, str]:
        """The answer to catch a client up on and, once it is final, its HTML (one trip)."""
        latest = self.latest_answer(message_id)
        if latest is None or latest.status == Message.Status.STREAMING:
            return latest, ""
        return latest, latest.body_html()

    def begin_turn(
        self,
        text: str,
        client_message_id: str,
        *,
        fresh: bool = False,
        attachments: list[uuid.UUID] | None = None,
    ) -> tuple[Message, Message, bool]:
        """Store the user's message and open the assistant's answer to it.

        Returns (user_message, assistant_message, created). A resend with the same
        client_message_id returns the messages of the first send and created=False,
        so a reconnecting client can never start a second turn by retrying.
        `fresh`: the conversation was created for this very message, with its
        title: there is no earlier send to find and nothing to bump (two
        statements fewer).
        `attachments`: ids of the owner's unattached uploads, claimed by the
        question (AttachmentNotFound stores nothing).
        """
        existing = None if fresh else self._accepted(client_message_id)
        if existing:
            return (*existing, False)
        try:
            with transaction.atomic():
                user_message = self.messages.create(
                    role=Message.Role.USER,
                    status=Message.Status.COMPLETE,
                    text=text,
                    client_message_id=client_message_id,
                    # Its page HTML (escaped text) with the row: no write at its first view.
                    html=[rendering.user_text_html(text)],
                    html_version=rendering.RENDER_VERSION,
                )
                uploads = Attachment.objects.claim(self.user_id, user_message, attachments or [])
                user_message.knows_attachments(uploads)
                assistant = self._open_answer(user_message)
                if not fresh:
                    fields: dict[str, Any] = {"updated_at": timezone.now()}
                    if not self.title:
                        fields["title"] = Conversation.title_from(text)
                    Conversation.objects.filter(pk=self.pk).update(**fields)
        except IntegrityError:
            existing = self._accepted(client_message_id)
            if existing:
                return (*existing, False)
            raise TurnInProgress from None
        return user_message, assistant, True

    def begin_regeneration(self) -> tuple[int, Message, list[int]]:
        """Open a new answer to the question of the active branch's latest answer.

        The old answer is kept as a version (a sibling of the new one under
        the same question, off the active branch, images and all).
        Returns (replaced_id, answer, versions: the ids of every answer to
        that question, oldest first). Refused while any answer streams.
        """
        with transaction.atomic():
            last = self.messages.filter(active=True).order_by("-id").first()
            if last is None or last.role != Message.Role.ASSISTANT or last.reply_to_id is None:
                raise NothingToRegenerate
            if last.status == Message.Status.STREAMING:
                raise TurnInProgress
            question, replaced = last.reply_to, last.pk
            assert question is not None  # reply_to_id was checked above
            Message.objects.filter(pk=replaced).update(active=False)
            try:
                with transaction.atomic():
                    answer = self._open_answer(question)
            except IntegrityError:
                raise TurnInProgress from None
            Conversation.objects.filter(pk=self.pk).update(updated_at=timezone.now())
        return replaced, answer, self.versions_of(question.pk)

    def begin_continuation(self) -> Message:
        """Reopen the latest answer, cut off by its length limit, to carry it on.

        Raises NothingToContinue unless the conversation ends with a truncated
        answer, TurnInProgress while any answer streams.
        """
        last = self.messages.filter(active=True).order_by("-id").first()
        if last is None or last.role != Message.Role.ASSISTANT or not last.truncated:
            raise NothingToContinue
        try:
            with transaction.atomic():
                # Conditional: two tabs pressing Continue start one turn.
                reopened = Message.objects.filter(
                    pk=last.pk, truncated=True, status=Message.Status.COMPLETE
                ).update(
                    status=Message.Status.STREAMING,
                    truncated=False,
                    heartbeat_at=timezone.now(),
                    owner=instances.current(),
                    html_version=0,  # its text grows again: the stored HTML is stale
                )
        except IntegrityError:
            raise TurnInProgress from None
        if not reopened:
            raise TurnInProgress
        Conversation.objects.filter(pk=self.pk).update(updated_at=timezone.now())
        return last

    def _open_answer(self, question: Message) -> Message:
        # The partial unique index on (conversation, streaming) is what makes
        # "one answer at a time" hold across processes: a second one raises
        # IntegrityError.
        return self.messages.create(
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            reply_to=question,
            model=settings.CHAT_MODEL,
            heartbeat_at=timezone.now(),
        )

    def _accepted(self, client_message_id: str) -> tuple[Message, Message] | None:
        user_message = self.messages.filter(client_message_id=client_message_id).first()
        if user_message is None:
            return None
        # A regenerated question has several answers: the one on the active branch.
        reply = user_message.replies.order_by("-active", "-id").first()
        assert reply is not None  # a question and its answer are created together
        return user_message, reply

    # --- edit and branch (docs/architecture.md) ---------------------------------------
    #
    # Every message points at the one before it on its path (`parent`); the
    # messages of the active branch carry `active`, so that branch (what the page
    # shows and the model is sent) is one indexed filter. Ids grow along any
    # path, so ordering by id orders a path. `chosen_at` remembers, among
    # siblings, which one was on the active branch last: a switch follows it down.

    def active_path(self) -> list[Message]:
        """The active branch, oldest first, each message with its `versions` (sibling ids)."""
        tree = self._tree()
        messages = list(
            self.messages.filter(active=True).prefetch_related(
                "tool_invocations__images__parents", "attachments"
            )
        )
        return _with_versions(messages, tree)

    def active_tail(self, count: int) -> list[Message]:
        """The last `count` messages of the active branch, oldest first, with `versions`."""
        tail = list(reversed(self.messages.filter(active=True).order_by("-id")[:count]))
        return _with_versions(tail, self._tree())

    def versions_of(self, parent_id: int | None) -> list[int]:
        """The ids of the messages that follow `parent_id` (None: the first ones), oldest first."""
        return list(
            self.messages.filter(parent_id=parent_id).order_by("id").values_list("id", flat=True)
        )

    def begin_edit(
        self, message_id: int | None, text: str, client_message_id: str
    ) -> tuple[Message, Message, bool, int, list[int]]:
        """Branch from a user message: its edited text becomes a sibling, and is answered.

        Returns (user_message, answer, created, replaced_id, versions). The
        original and everything after it stay, off the active branch. A resend
        (the same client_message_id) returns the first edit with created=False.
        NotFound for a message that is not a user message of this conversation;
        TurnInProgress while an answer streams (nothing changes). `message_id`
        None: the last question of the active branch (the CLI's --edit-last).
        """
        questions = self.messages.filter(role=Message.Role.USER)
        if message_id is None:
            original = questions.filter(active=True).order_by("-id").first()
        else:
            original = questions.filter(pk=message_id).first()
        if original is None:
            raise MessageNotFound
        existing = self._accepted(client_message_id)
        if existing:
            return (*existing, False, original.pk, self.versions_of(original.parent_id))
        try:
            with transaction.atomic():
                self._lock()
                tree = self._tree()
                if any(node.status == Message.Status.STREAMING for node in tree.values()):
                    raise TurnInProgress
                # The new branch: the original's ancestors, then the new version.
                # (The original is usually on the active branch, but a client may
                # edit one it still shows after another tab switched away.)
                ancestors, at = set(), original.parent_id
                while at is not None:
                    ancestors.add(at)
                    at = tree[at].parent_id
                active = {pk for pk, node in tree.items() if node.active}
                self.messages.filter(id__in=active - ancestors).update(active=False)
                self.messages.filter(id__in=ancestors - active).update(active=True)
                user_message = Message(
                    conversation=self,
                    role=Message.Role.USER,
                    status=Message.Status.COMPLETE,
                    text=text,
                    client_message_id=client_message_id,
                    parent_id=original.parent_id,
                )
                user_message.root = original.parent_id is None
                user_message.save(force_insert=True)
                answer = self._open_answer(user_message)
                Conversation.objects.filter(pk=self.pk).update(updated_at=timezone.now())
        except IntegrityError:
            existing = self._accepted(client_message_id)
            if existing:
                return (*existing, False, original.pk, self.versions_of(original.parent_id))
            raise TurnInProgress from None
        return user_message, answer, True, original.pk, self.versions_of(original.parent_id)

    def switch_branch(self, message_id: int) -> tuple[int | None, list[Message]]:
        """Make the branch through `message_id` the active one.

        Down from it, each step takes the child that was chosen last. Returns
        (replaced_id, messages): the message that was active where the branches
        part and the new branch from there to its leaf, with `versions`; no
        messages if nothing changed. NotFound for a message not in this conversation;
        TurnInProgress while an answer streams.
        """
        with transaction.atomic():
            self._lock()
            tree = self._tree()
            if message_id not in tree:
                raise MessageNotFound
            if any(node.status == Message.Status.STREAMING for node in tree.values()):
                raise TurnInProgress
            up = [message_id]
            while (parent := tree[up[-1]].parent_id) is not None:
                up.append(parent)
            path = [*reversed(up), *_latest_descent(tree, message_id)]
            fork = next((i for i, pk in enumerate(path) if not tree[pk].active), None)
            if fork is None:
                return None, []
            parent_id = tree[path[fork]].parent_id
            replaced = next(
                (n.id for n in tree.values() if n.active and n.parent_id == parent_id), None
            )
            if replaced is None and fork > 0:
                # Nothing was shown at the fork (a message deleted in the admin):
                # re-render from its parent down.
                fork -= 1
                replaced = path[fork]
            old = {pk for pk, node in tree.items() if node.active}
            self.messages.filter(id__in=old - set(path)).update(active=False)
            self.messages.filter(id__in=set(path) - old).update(active=True)
            self.messages.filter(id__in=up).update(chosen_at=timezone.now())
            messages = list(
                self.messages.filter(id__in=path[fork:]).prefetch_related(
                    "tool_invocations__images__parents", "attachments"
                )
            )
        return replaced, _with_versions(messages, tree)

    def _tree(self) -> dict[int, _Node]:
        """Every message's place in the conversation (no text): one query."""
        rows = self.messages.values_list("id", "parent_id", "chosen_at", "active", "status")
        return {row[0]: _Node(*row) for row in rows}

    def _lock(self) -> None:
        # Edits and switches of one conversation, one at a time (PostgreSQL;
        # SQLite serialises writers anyway).
        list(Conversation.objects.select_for_update().filter(pk=self.pk).values_list("pk"))

    @staticmethod
    def title_from(text: str) -> str:
        words = " ".join(text.split())
        return words if len(words) <= 60 else words[:57].rstrip() + "…"


class _Node(NamedTuple):
    id: int
    parent_id: int | None
    chosen_at: Any
    active: bool
    status: str


def _latest_descent(tree: dict[int, _Node], start: int) -> list[int]:
    """From `start` down, the child chosen last at each step (the newest on a tie)."""
    children: dict[int | None, list[_Node]] = {}
    for node in tree.values():
        children.setdefault(node.parent_id, []).append(node)
    path, at = [], start
    while children.get(at):
        at = max(children[at], key=lambda n: (n.chosen_at, n.id)).id
        path.append(at)
    return path


def _has_siblings() -> models.Case:
    """A message's EXISTS column: another message has its parent (or is, like it,
    a first question): the message has versions, the page needs the tree."""
    others = Message.objects.exclude(pk=OuterRef("pk"))
    # A parent's children by the parent_id index alone (its conversation is
    # implied; a second index in the condition made PostgreSQL AND two scans).
    roots = others.filter(conversation_id=OuterRef("conversation_id"), parent__isnull=True)
    return models.Case(
        models.When(parent__isnull=True, then=models.Exists(roots)),
        default=models.Exists(others.filter(parent_id=OuterRef("parent_id"))),
        output_field=models.BooleanField(),
    )


def _has_attachments() -> models.Exists:
    return models.Exists(Attachment.objects.filter(message=OuterRef("pk")))


def _has_tool_calls() -> models.Exists:
    return models.Exists(ToolInvocation.objects.filter(message=OuterRef("pk")))


def _prefetch_where(objects: list[Any], lookup: str, has_rows: Callable[[Any], bool]) -> None:
    """prefetch_related_objects(objects, lookup) for the objects that have related
    rows; the others are told they have none (what a prefetch stores), without a
    query."""
    wanted = [obj for obj in objects if has_rows(obj)]
    if wanted:
        models.prefetch_related_objects(wanted, lookup)
    relation = lookup.split(LOOKUP_SEP, 1)[0]
    for obj in objects:
        if not has_rows(obj):
            _know_related(obj, relation, [])


def _know_related(obj: Any, relation: str, rows: list[Any]) -> None:
    """Store `rows` as `obj`'s prefetched `relation`, as prefetch_related_objects does."""
    related = getattr(obj, relation).all()
    related._result_cache = rows
    related._prefetch_done = True
    cache = obj.__dict__.setdefault("_prefetched_objects_cache", {})
    cache[relation] = related


def _with_versions(messages: list[Message], tree: dict[int, _Node]) -> list[Message]:
    siblings: dict[int | None, list[int]] = {}
    for node in sorted(tree.values(), key=lambda n: n.id):
        siblings.setdefault(node.parent_id, []).append(node.id)
    for message in messages:
        message.versions = siblings.get(message.parent_id, [message.pk])
    return messages


class MessageQuerySet(models.QuerySet["Message"]):
    def mark_stale_interrupted(
        self,
        now: Any = None,
        *,
        all_streaming: bool = False,
        text_of: Callable[[Message], str] | None = None,
    ) -> list[Message]:
        """Close answers whose turn died with its process (no heartbeat lately).

        Their last checkpoint stays as the stored text; nothing is left
        "streaming" forever. `all_streaming` closes every streaming answer,
        fresh heartbeat or not: for the start-up of the only process there is.
        `text_of` gives an answer's text as recovered (conversations/streams.py:
        the checkpoint carried on by the deltas published after it).
        Returns the messages it closed.
        """
        now = now or timezone.now()
        cutoff = now - timedelta(seconds=settings.STALE_TURN_SECONDS)
        stale = Q(status=Message.Status.STREAMING)
        if not all_streaming:
            stale &= Q(heartbeat_at__lt=cutoff)
        return self._close(stale, now, text_of)

    def streaming_owners(self) -> set[str]:
        """The instances (processes) that run an answer now, as the database says."""
        rows = self.filter(status=Message.Status.STREAMING).values_list("owner", flat=True)
        # Without order_by(), the default ordering's id joins the DISTINCT: a row per answer.
        return set(rows.order_by().distinct())

    def mark_orphans_interrupted(
        self, owners: Collection[str], *, text_of: Callable[[Message], str] | None = None
    ) -> list[Message]:
        """Close the streaming answers of these owners, whose leases lapsed (they died)."""
        orphaned = Q(status=Message.Status.STREAMING, owner__in=list(owners))
        return self._close(orphaned, timezone.now(), text_of)

    def close_orphan(
        self,
        conversation_id: Any,
        status: str,
        *,
        text_of: Callable[[Message], str] | None = None,
        owner: str | None = None,
    ) -> list[Message]:
        """End the conversation's streaming answer that no process runs (Stop on an
        orphan): at once, with its recovered text. `owner`, when given, must still
        be the answer's owner (a turn that started meanwhile is not touched)."""
        orphan = Q(status=Message.Status.STREAMING, conversation_id=conversation_id)
        if owner is not None:
            orphan &= Q(owner=owner)
        return self._close(orphan, timezone.now(), text_of, status)

    def _close(
        self,
        which: Q,
        now: Any,
        text_of: Callable[[Message], str] | None,
        status: str = "interrupted",
    ) -> list[Message]:
        if status == Message.Status.CANCELLED:
            error = {"error_code": "", "error_message": ""}
        else:
            error = {"error_code": "interrupted", "error_message": INTERRUPTED_MESSAGE}
        closed = []
        for message in self.filter(which):
            with transaction.atomic():
                # Conditional, so that two sweepers (or a late heartbeat) never race.
                recovered = {"text": text_of(message)} if text_of else {}
                won = Message.objects.filter(which, pk=message.pk).update(
                    **recovered,
                    **error,
                    html_version=0,
                    status=status,
                    heartbeat_at=None,
                    updated_at=now,
                )
                if not won:
                    continue
                message.tool_invocations.filter(status=ToolInvocation.Status.RUNNING).update(
                    status=ToolInvocation.Status.FAILED,
                    error="The server stopped before the image was finished.",
                    result={"status": "error", "error": "The server stopped."},
                    finished_at=now,
                )
            closed.append(message)
        return closed

    def store_html(self, messages: list[Message]) -> int:
        """Store the HTML rendered for these messages at this view (one UPDATE, or none).

        After RENDER_VERSION changed, the first view of a chat stores its
        messages' new HTML; later views find it. Conditional on the message
        still being final: an answer reopened meanwhile (turn.continue) keeps
        its reset html_version.
        """
        stale = [m for m in messages if m.html_stale and m.is_final]
        if not stale:
            return 0
        for message in stale:
            message.html_stale = False
        return self.exclude(status=Message.Status.STREAMING).bulk_update(
            stale, ["html", "html_version"], batch_size=200
        )


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    text = models.TextField(blank=True)
    # The client's idempotency key: a resend with the same key is the same message.
    client_message_id = models.CharField(max_length=64, blank=True)
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="replies"
    )
    # The message before this one on its path (None: a first message). Siblings
    # (the same parent) are versions: edits of a question, regenerated answers.
    # SET_NULL, not CASCADE: deleting one message (the admin) must not take the
    # rest of its conversation with it; deleting a conversation removes all.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    # On the conversation's active branch: what the page shows and the model is sent.
    active = models.BooleanField(default=True)
    # When it last became the active one among its siblings (a switch follows it).
    chosen_at = models.DateTimeField(default=timezone.now)
    model = models.CharField(max_length=100, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # Written at every checkpoint; a stale one means the turn's process died.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The instance (process) that runs the answer: it created the row, so the
    # default is this process (conversations/instances.py keeps its lease).
    owner = models.CharField(max_length=100, blank=True, default=instances.current)
    # The model stopped at its length limit (finish_reason "length"): the text
    # is kept, and the answer can be continued (turn.continue).
    truncated = models.BooleanField(default=False)
    # The sanitised HTML of the final text, rendered once instead of at every
    # view (Markdown + nh3 were 60 % of opening a long chat): one string per
    # segment of `segments()` (the text cut at each tool call; the tool cards
    # between them, and a question's attachments, are rendered per view: an
    # image's review can hide it). Valid only while `html_version` equals
    # rendering.RENDER_VERSION: a renderer change bumps that constant and every
    # stored HTML is re-rendered lazily at its next view (conversations/rendering.py).
    # Whatever changes a final message's text must reset `html_version` to 0.
    html = models.JSONField(default=list, blank=True)
    html_version = models.PositiveSmallIntegerField(default=0)

    objects = MessageQuerySet.as_manager()

    #: Not a field: set when `html` was (re)rendered in this process and is not
    #: stored yet (conversations/rendering.py segment_html; MessageQuerySet.store_html).
    html_stale = False

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_message_id"],
                condition=~Q(client_message_id=""),
                name="message_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status="streaming"),
                name="one_streaming_answer_per_conversation",
            ),
        ]
        indexes = [
            models.Index(
                fields=["heartbeat_at"],
                condition=Q(status="streaming"),
                name="message_streaming_heartbeat",
            ),
            # The active branch (history, catch-up, the page): one range scan.
            models.Index(
                fields=["conversation", "id"], condition=Q(active=True), name="message_active_path"
            ),
            # A resend of a conversation's first message has no conversation id yet.
            models.Index(
                fields=["client_message_id"],
                condition=~Q(client_message_id=""),
                name="message_client_key",
            ),
        ]

    #: Set by Conversation.active_path / switch_branch: the ids of this message's
    #: siblings (itself included), oldest first. Not a field.
    versions: list[int]
    #: A new message meant to start its conversation's path (an edit of the first one).
    root = False

    def __str__(self) -> str:
        preview = self.text[:40] + ("…" if len(self.text) > 40 else "")
        return f"{self.role} #{self.pk}: {preview}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """A new message without a parent follows its question, or the active branch's end.

        The end is looked up inside the INSERT (a subquery): no extra round
        trip on the turn start, and callers (tests, fixtures) need not know.
        """
        looked_up = False
        if self._state.adding and self.parent_id is None and not self.root:
            if self.reply_to_id is not None:
                self.parent_id = self.reply_to_id
            else:
                leaf = Message.objects.filter(conversation_id=self.conversation_id, active=True)
                self.parent_id = Subquery(leaf.order_by("-id").values("id")[:1])
                looked_up = True
        super().save(*args, **kwargs)
        if looked_up:
            # The expression is not a value: read the parent from the row if asked.
            del self.__dict__["parent_id"]

    @property
    def version_index(self) -> int:
        """This message's place among its versions, from 1 (the page's "2 / 3")."""
        versions = getattr(self, "versions", [self.pk])
        return versions.index(self.pk) + 1 if self.pk in versions else 1

    @property
    def has_versions(self) -> bool:
        return len(getattr(self, "versions", ())) > 1

    @property
    def error_text(self) -> str:
        """The plain sentence for this answer's error code (the page shows it)."""
        return text_of(self.error_code)

    @property
    def is_final(self) -> bool:
        return self.status != self.Status.STREAMING

    def knows_attachments(self, uploads: list[Attachment]) -> None:
        """Hold `uploads` as this message's prefetched attachments.

        For a question just stored: it has exactly the uploads it claimed, so
        reading them (its frames, the model's context) needs no query. This is
        what prefetch_related_objects stores, without asking the database.
        """
        _know_related(self, "attachments", list(uploads))

    def body_html(self, invocations: list[ToolInvocation] | None = None) -> str:
        return rendering.message_html(self, invocations)

    def segments(
        self, invocations: list[ToolInvocation] | None = None
    ) -> list[tuple[str, ToolInvocation | None]]:
        """The text cut at each tool call: [(text, invocation_after_it), ...].

        Uses the prefetched tool_invocations when present (no extra query), or
        `invocations` when the caller knows them.
        """
        if invocations is None:
            invocations = list(self.tool_invocations.all())
        parts: list[tuple[str, ToolInvocation | None]] = []
        start = 0
        for invocation in sorted(invocations, key=lambda i: i.id):
            offset = min(max(invocation.text_offset, start), len(self.text))
            parts.append((self.text[start:offset], invocation))
            start = offset
        parts.append((self.text[start:], None))
        return parts

    def checkpoint(self, text: str) -> bool:
        """Save the streamed text so far and prove the turn is alive (one UPDATE).

        False when the answer is no longer streaming: something else ended it
        (a Stop or a sweep that took this process for dead)."""
        now = timezone.now()
        return bool(
            Message.objects.filter(pk=self.pk, status=Message.Status.STREAMING).update(
                text=text, heartbeat_at=now, updated_at=now
            )
        )

    def finish(
        self,
        status: str,
        text: str,
        *,
        usage: dict[str, int] | None = None,
        error_code: str = "",
        error_message: str = "",
        truncated: bool = False,
        invocations: list[ToolInvocation] | None = None,
    ) -> None:
        """Store the final state (one UPDATE).

        `invocations`: the answer's tool invocations when the caller knows them
        (`[]` for an answer without tool calls); its HTML is then rendered and
        stored in the same UPDATE, and `body_html` finds it. Otherwise the
        stored HTML is reset and rendered at the first view.
        """
        self.status = status
        self.truncated = truncated
        self.text = text
        self.usage = usage or {}
        self.error_code = error_code
        self.error_message = error_message
        self.heartbeat_at = None
        self.updated_at = timezone.now()
        self.html, self.html_version = [], 0
        if invocations is not None:
            rendering.segment_html(self, self.segments(invocations))
            self.html_stale = False  # stored by this very UPDATE
        self.save(
            update_fields=[
                "status",
                "text",
                "usage",
                "error_code",
                "error_message",
                "heartbeat_at",
                "updated_at",
                "truncated",
                "html",
                "html_version",
            ]
        )


class ToolInvocation(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETE = "complete"
        FAILED = "failed"

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="tool_invocations")
    call_id = models.CharField(max_length=100)
    name = models.CharField(max_length=100)
    arguments = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    # The small JSON the model gets back: never bytes, base64 or a signed URL.
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # Where in the assistant's text the model made the call.
    text_offset = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def prompt(self) -> str:
        value = self.arguments.get("prompt", "") if isinstance(self.arguments, dict) else ""
        return str(value)

    def complete(self, result: dict[str, Any]) -> None:
        self.status = self.Status.COMPLETE
        self.result = result
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "result", "finished_at"])

    def fail(self, error: str) -> None:
        self.status = self.Status.FAILED
        self.error = error
        self.result = {"status": "error", "error": error}
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "error", "result", "finished_at"])

    @property
    def image_list(self) -> list[GeneratedImage]:
        """This call's images in their order (uses the prefetched `images` when present)."""
        return sorted(self.images.all(), key=lambda image: image.index)

    @property
    def image_or_none(self) -> GeneratedImage | None:
        """The call's first image (most calls make exactly one)."""
        images = self.image_list
        return images[0] if images else None

    def model_result(self) -> dict[str, Any]:
        """What the model is told about this call, for the history we rebuild."""
        if self.result:
            return dict(self.result)
        if self.status == self.Status.RUNNING:
            return {"status": "error", "error": "The image was not finished."}
        return {"status": self.status}


def image_key(instance: GeneratedImage, filename: str) -> str:
    """An unguessable object key, never derived from the user's text."""
    return f"images/{instance.id.hex[:2]}/{instance.id.hex}.{instance.format or 'png'}"


class GeneratedImageQuerySet(models.QuerySet["GeneratedImage"]):
    def visible_to(self, user: Any) -> GeneratedImageQuerySet:
        """What a person may be served: staff see everything, owners what is not hidden."""
        if user.is_staff:
            return self
        return self.filter(user=user).exclude(review_status=GeneratedImage.Review.HIDDEN)


class GeneratedImage(models.Model):
    class Review(models.TextChoices):
        UNREVIEWED = "unreviewed"
        VISIBLE = "visible"
        FLAGGED = "flagged"
        HIDDEN = "hidden"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generated_images"
    )
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="images")
    # One call can make several images (`n`); `index` is their order in it.
    tool_invocation = models.ForeignKey(
        ToolInvocation, on_delete=models.CASCADE, related_name="images"
    )
    index = models.PositiveSmallIntegerField(default=0)
    # The images an edit started from (edit_image); their children are the edits.
    parents = models.ManyToManyField("self", symmetrical=False, related_name="children", blank=True)
    # The storage key only: the bytes live in object storage.
    file = models.FileField(upload_to=image_key, max_length=200)
    sha256 = models.CharField(max_length=64)
    bytes = models.PositiveIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    format = models.CharField(max_length=10, default="png")
    model = models.CharField(max_length=100)
    size = models.CharField(max_length=20, blank=True)
    quality = models.CharField(max_length=20, blank=True)
    style = models.CharField(max_length=20, blank=True)
    prompt = models.TextField()
    revised_prompt = models.TextField(blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    # The key of its small WebP once one was made (conversations/thumbnails.py).
    thumbnail = models.CharField(max_length=200, blank=True, editable=False)
    # Only when the operator configured the provider's price (CHATIMG_IMAGE_PRICES).
    cost_usd = models.DecimalField(max_digits=8, decimal_places=4, null=True, blank=True)
    review_status = models.CharField(
        max_length=12, choices=Review.choices, default=Review.UNREVIEWED, db_index=True
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="reviewed_images",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = GeneratedImageQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at"], name="image_recent"),
            models.Index(fields=["user", "-created_at"], name="image_user_recent"),
            # The same bytes are stored once per user: found by this lookup.
            models.Index(fields=["user", "sha256"], name="image_user_sha256"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["tool_invocation", "index"], name="image_call_index")
        ]

    def __str__(self) -> str:
        return f"{self.prompt[:60]} ({self.width}x{self.height})"

    def get_absolute_url(self) -> str:
        return reverse("image", args=[self.id])

    @property
    def is_hidden(self) -> bool:
        return self.review_status == self.Review.HIDDEN

    def summary(self) -> dict[str, Any]:
        """The image as clients and the model see it: app URL, no storage URL."""
        return {
            "id": str(self.id),
            "url": self.get_absolute_url(),
            "prompt": self.prompt,
            "revised_prompt": self.revised_prompt or None,
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "index": self.index,
            # Filled by the caller that knows them (prefetched or just recorded).
            "parents": [],
        }

    def lineage_summary(self, parents: list[GeneratedImage]) -> dict[str, Any]:
        """summary() with the parents an edit started from (id and app URL each)."""
        summary = self.summary()
        summary["parents"] = [
            {"id": str(parent.id), "url": parent.get_absolute_url(), "prompt": parent.prompt}
            for parent in parents
        ]
        return summary


@receiver(post_delete, sender=GeneratedImage)
def delete_image_object(sender: type, instance: GeneratedImage, **kwargs: Any) -> None:
    """Deleting an image row, directly or by cascade, removes its object too.

    The debt is written in the deleting transaction (a PendingDeletion), so it
    is never lost: not when storage refuses, not when the process dies before
    the object is gone. Once the deletion commits the object is deleted and
    the record with it; a failure leaves the record for the retries
    (PendingDeletion.objects.retry_due). Identical bytes are stored once:
    an object another row still uses is kept.
    """
    # The thumbnail is per row (keyed by its id), even when the bytes are shared.
    keys = [key for key in (instance.file.name, instance.thumbnail) if key]
    for key in keys:
        PendingDeletion.objects.get_or_create(key=key)
    transaction.on_commit(lambda: PendingDeletion.objects.settle(keys))


def attachment_key(instance: Attachment, filename: str) -> str:
    """An unguessable key of its own folder (cleanup_images lists images/ only)."""
    return f"uploads/{instance.id.hex[:2]}/{instance.id.hex}.{instance.format or 'png'}"


def thumbnail_key(kind: str, pk: uuid.UUID) -> str:
    """Where the small WebP of an image or an upload goes (conversations/thumbnails.py).

    Derived from the row's own unguessable id; the row records it once it exists.
    """
    return f"thumbs/{kind}/{pk.hex[:2]}/{pk.hex}.webp"


class AttachmentNotFound(ChatimgError):
    """An attachment id that is not the sender's own unattached upload."""

    def __init__(self) -> None:
        super().__init__(
            "attachment_not_found", "An attached image is no longer available; attach it again."
        )


class AttachmentQuerySet(models.QuerySet["Attachment"]):
    def visible_to(self, user: Any) -> AttachmentQuerySet:
        """What a person may be served: staff see everything, owners their own."""
        return self if user.is_staff else self.filter(owner=user)

    def claim(self, user: Any, message: Message, ids: list[uuid.UUID]) -> list[Attachment]:
        """Attach the user's own unattached uploads to their message, or AttachmentNotFound.

        Conditional (one UPDATE): an id that is someone else's, already sent,
        or missing fails the whole send; the caller's transaction then stores
        nothing. Run inside that transaction.
        """
        wanted = set(ids)
        if not wanted:
            return []
        claimed = self.filter(pk__in=wanted, owner=user, message=None).update(
            message=message, conversation_id=message.conversation_id, attached_at=timezone.now()
        )
        if claimed != len(wanted):
            raise AttachmentNotFound
        return list(self.filter(pk__in=wanted))

    def purge_unattached(self, older_than: timedelta | None = None) -> int:
        """Delete uploads never sent with a message (their objects go too); returns how many."""
        age = older_than or timedelta(seconds=settings.UPLOAD_UNATTACHED_SECONDS)
        stale = self.filter(message=None, created_at__lt=timezone.now() - age)
        count = 0
        for attachment in stale[:500]:
            attachment.delete()
            count += 1
        return count


class Attachment(models.Model):
    """An image a user uploaded to send with a message (conversations/attachments.py).

    Created unattached by the upload; the send of a message claims it (message
    and conversation set). Deleted with its message or conversation, object too.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attachments"
    )
    conversation = models.ForeignKey(
        Conversation,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="attachments",
    )
    message = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.CASCADE, related_name="attachments"
    )
    # The storage key only: the (re-encoded, metadata-free) bytes live in object storage.
    file = models.FileField(upload_to=attachment_key, max_length=200)
    format = models.CharField(max_length=10)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    bytes = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    thumbnail = models.CharField(max_length=200, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    attached_at = models.DateTimeField(null=True, blank=True)

    objects = AttachmentQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["created_at"], condition=Q(message=None), name="attachment_unattached"
            ),
        ]

    def __str__(self) -> str:
        return f"upload {str(self.id)[:8]} ({self.width}x{self.height})"

    def get_absolute_url(self) -> str:
        return reverse("attachment", args=[self.id])

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.format == "jpg" else f"image/{self.format}"

    def summary(self) -> dict[str, Any]:
        """The upload as clients see it: its app URL, never a storage URL."""
        return {
            "id": str(self.id),
            "url": self.get_absolute_url(),
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
        }


@receiver(post_delete, sender=Attachment)
def delete_attachment_object(sender: type, instance: Attachment, **kwargs: Any) -> None:
    """Like delete_image_object: the object (and its thumbnail) is owed, then deleted."""
    keys = [key for key in (instance.file.name, instance.thumbnail) if key]
    for key in keys:
        PendingDeletion.objects.get_or_create(key=key)
    transaction.on_commit(lambda: PendingDeletion.objects.settle(keys))


class PendingDeletionQuerySet(models.QuerySet["PendingDeletion"]):
    def settle(self, keys: list[str]) -> int:
        """Delete these objects from storage; returns how many are still owed.

        Storage calls block: run this off the event loop. A success also
        works off the backlog (storage is evidently up again).
        """
        owed = 0
        for key in keys:
            if not self._settle_one(key):
                owed += 1
        if keys and not owed:
            self.retry_due(limit=20, failed_only=True)
        return owed

    def _settle_one(self, key: str) -> bool:
        if (
            GeneratedImage.objects.filter(file=key).exists()
            or Attachment.objects.filter(file=key).exists()
        ):
            self.filter(key=key).delete()  # still in use (a shared object): keep it
            return True
        try:
            default_storage.delete(key)
        except Exception as exc:
            log.warning("could not delete image object %s (will retry): %s", key, exc)
            record = self.filter(key=key).first()
            if record is not None:
                record.failed(exc)
            return False
        self.filter(key=key).delete()
        return True

    def retry_due(self, limit: int = 100, *, failed_only: bool = False) -> int:
        """Retry the deletions whose next attempt is due; returns how many are still owed.

        `failed_only` skips records not tried yet (their own transaction's
        on_commit is about to try them).
        """
        due = self.filter(next_attempt_at__lte=timezone.now())
        if failed_only:
            due = due.filter(attempts__gt=0)
        keys = list(due.order_by("next_attempt_at").values_list("key", flat=True)[:limit])
        owed = 0
        for key in keys:
            if not self._settle_one(key):
                owed += 1
        return owed


class PendingDeletion(models.Model):
    """A storage object that must be deleted: its row is gone, the object may not be."""

    key = models.CharField(max_length=200, unique=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = PendingDeletionQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.key} ({self.attempts} attempts)"

    def failed(self, error: Exception) -> None:
        """Back off: 10 s, 20 s, 40 s ... up to an hour between attempts."""
        self.attempts += 1
        self.last_error = f"{type(error).__name__}: {error}"[:1000]
        delay = min(3600, 10 * 2 ** min(self.attempts - 1, 12))
        self.next_attempt_at = timezone.now() + timedelta(seconds=delay)
        self.save(update_fields=["attempts", "last_error", "next_attempt_at"])


class QuotaExceeded(Exception):
    def __init__(self, limit: int, left: int = 0) -> None:
        super().__init__(f"daily image quota of {limit} reached")
        self.limit = limit
        self.left = left


class ImageQuotaManager(models.Manager["ImageQuota"]):
    def _today(self, user: Any) -> ImageQuota:
        quota, _ = self.get_or_create(user=user, day=timezone.now().date())
        return quota

    def reserve(self, user: Any, count: int = 1) -> int | None:
        """Take `count` images from today's allowance; returns how many are left.

        Atomic (one conditional UPDATE), so concurrent turns cannot overspend:
        all `count` or none. Staff are counted but never refused (None = unlimited).
        """
        limit = settings.IMAGES_PER_DAY
        with transaction.atomic():
            quota = self._today(user)
            rows = self.filter(pk=quota.pk)
            if not user.is_staff:
                rows = rows.filter(used__lte=limit - count)
            if not rows.update(used=models.F("used") + count):
                raise QuotaExceeded(limit, max(0, limit - quota.used))
        return None if user.is_staff else limit - quota.used - count

    def release(self, user: Any, count: int = 1) -> None:
        """Give back reservations whose images were never made."""
        self.filter(user=user, day=timezone.now().date(), used__gte=count).update(
            used=models.F("used") - count
        )

    def remaining(self, user: Any, used: int | None = None) -> int | None:
        """Images left today (None: unlimited); `used`, when a query read it already."""
        if user.is_staff:
            return None
        if used is None:
            quota = self.filter(user=user, day=timezone.now().date()).first()
            used = quota.used if quota else 0
        return settings.IMAGES_PER_DAY - used

    def used_today(self, user: Any) -> Coalesce:
        """Today's count as a column for another query of the user's (0 without a row).

        Uncorrelated, so PostgreSQL and SQLite compute it once per query, not per row.
        """
        today = self.filter(user=user, day=timezone.now().date()).values("used")[:1]
        return Coalesce(Subquery(today), 0)


class ImageQuota(models.Model):
    """Images generated per user per (UTC) day, counted atomically."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    day = models.DateField()
    used = models.PositiveIntegerField(default=0)

    objects = ImageQuotaManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "day"], name="quota_user_day")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.day}: {self.used}"


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def authenticate(self, raw: str) -> Any:
        """The active user a raw bearer token belongs to, or None."""
        token = self.authenticate_token(raw)
        return None if token is None else token.user

    def authenticate_token(self, raw: str) -> ApiToken | None:
        """The live token (its user selected) for a raw bearer token, or None."""
        token = (
            self.filter(digest=ApiToken.digest_of(raw), revoked_at=None, user__is_active=True)
            .select_related("user")
            .first()
        )
        if token is None:
            return None
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token


class ApiToken(models.Model):
    """A personal token for programs that are not the browser (CLI, bots, apps).

    Only a SHA-256 digest is stored: the token itself is shown once, at
    creation. (A fast hash is enough: the tokens are 256 random bits.)
    """

    PREFIX = "cit_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    # The first characters, so that people can tell their tokens apart.
    hint = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @staticmethod
    def digest_of(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, user: Any, name: str) -> tuple[ApiToken, str]:
        """Create a token; returns the row and the raw token (shown only now)."""
        raw = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, hint=raw[: len(cls.PREFIX) + 4], digest=cls.digest_of(raw)
        )
        return token, raw

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class ShareQuerySet(models.QuerySet["Share"]):
    def live(self, now: Any = None) -> ShareQuerySet:
        """Shares that still open: not revoked, not expired."""
        now = now or timezone.now()
        return self.filter(revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now))

    def by_token(self, token: str) -> Share | None:
        """The live share a link's token opens (its conversation selected), or None.

        One indexed lookup by the token's key; the rest of the token must be
        the key's HMAC under this server's secret (compared in constant time).
        """
        key, mac = token[: Share.KEY_CHARS], token[Share.KEY_CHARS :]
        if len(key) != Share.KEY_CHARS or not mac:
            return None
        share = self.live().filter(key=key).select_related("conversation").first()
        if share is None or not share.verify(mac):
            return None
        return share


class Share(models.Model):
    """A read-only link to one conversation, for anyone who holds it.

    The link's token is `key` + HMAC(SECRET_KEY, key). Only the random key is
    stored: the database alone cannot rebuild a link (a leaked backup opens
    nothing), yet the owner can copy the link again at any time, since the
    server can recompute it. Rotating SECRET_KEY ends every link unless the
    old key stays in SECRET_KEY_FALLBACKS. See docs/security.md.
    """

    KEY_CHARS = 22  # secrets.token_urlsafe(16): 128 random bits
    MAC_CHARS = 32  # 128 bits of the HMAC-SHA256, hex

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="shares"
    )
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="shares")
    key = models.CharField(max_length=KEY_CHARS, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ShareQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.conversation} ({self.key[:6]}…)"

    def get_absolute_url(self) -> str:
        return reverse("shared", args=[self.token])

    @classmethod
    def open(cls, conversation: Conversation, days: int | None = None) -> Share:
        """A new link to the conversation, by its owner; `days` until it stops working."""
        expires = timezone.now() + timedelta(days=days) if days else None
        return cls.objects.create(
            owner_id=conversation.user_id,
            conversation=conversation,
            key=secrets.token_urlsafe(16),
            expires_at=expires,
        )

    @staticmethod
    def mac_of(key: str, secret: str | bytes | None = None) -> str:
        from django.utils.crypto import salted_hmac

        digest = salted_hmac("chatimg.share", key, secret=secret, algorithm="sha256")
        return digest.hexdigest()[: Share.MAC_CHARS]

    def verify(self, mac: str) -> bool:
        from django.utils.crypto import constant_time_compare

        secrets_ = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
        return any(constant_time_compare(mac, self.mac_of(self.key, s)) for s in secrets_)

    @property
    def token(self) -> str:
        return self.key + self.mac_of(self.key)

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None and (
            self.expires_at is None or self.expires_at > timezone.now()
        )

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
