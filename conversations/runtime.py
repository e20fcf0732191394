"""This process's turns: which run here, how other processes reach them, and the sweep.

Started explicitly (`start()`, from chatimg/asgi.py when the server takes its
first scope; stopped before the server shuts down), not as a side effect of a
socket. The arrow points one way: the runtime runs Turns; a Turn knows
nothing of the runtime.

- The registry: the turns of this process by conversation. Holding the task
  here is what keeps an answer alive after the socket that asked for it closed.
- The control receiver: one channel per process, for a Stop from any process.
  Its name is the value of the process's lease (conversations/instances.py),
  so a Stop goes straight to the answer's owner. Cancelling a pending
  channels-redis receive() mid-BZPOPMIN leaves the shared connection unusable
  for the process's other receivers, so turns do not each run (and cancel) a
  receiver of their own.
- The lease: renewed every RENEW_SECONDS while the process lives (with Redis).
- Storage deletions that failed are retried (conversations/deletions.py).
- The sweeps, in every process (they are idempotent): every SWEEP_SECONDS the
  answers whose owner's lease lapsed are closed `interrupted` with the text of
  their stream, and their followers told; more slowly, answers without a fresh
  heartbeat (rows from before owners were recorded, or a Redis without leases).
- Stop always works: an answer that no living process runs (its owner's lease
  lapsed, or its owner has no turn for it) is ended at once, with its text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from conversations import dbpool, deletions, delivery, instances, llm, protocol, streams
from conversations.models import Message
from conversations.turns import Turn, TurnContext

log = logging.getLogger(__name__)


@dataclass
class _Runtime:
    channel: str
    draining: bool = False
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    running: dict[uuid.UUID, Turn] = field(default_factory=dict)


# One runtime per event loop: the server's one, or a test's.
_runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Runtime]
_runtimes = weakref.WeakKeyDictionary()
_starting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[_Runtime]]
_starting = weakref.WeakKeyDictionary()


async def start() -> None:
    """Start this process's control receiver and sweep (idempotent)."""
    await _runtime()


async def _runtime() -> _Runtime:
    loop = asyncio.get_running_loop()
    if loop in _runtimes:
        return _runtimes[loop]
    if loop in _starting:  # another caller is starting it: wait for that
        return await asyncio.shield(_starting[loop])
    _starting[loop] = loop.create_future()
    try:
        # The default prefix matters: channels-redis serves every process-local
        # channel through one BZPOPMIN on "specific.<client>!", under one lock.
        channel = await get_channel_layer().new_channel()
        runtime = _Runtime(channel)
        leases = instances.leases()
        if leases is not None:
            # Before any turn: an answer must never exist with a lapsed owner.
            try:
                await leases.renew(channel)
            except Exception as exc:
                log.warning("the first lease renewal failed: %s", exc)
            _background(runtime, _keep_lease(leases, channel))
            _background(runtime, _sweep_orphans_forever(leases))
        _background(runtime, _serve_control(runtime))
        _background(runtime, _sweep_forever())
        _background(runtime, deletions.retry_forever())
        _runtimes[loop] = runtime
        _stop_with_the_server()
        _starting.pop(loop).set_result(runtime)
    except BaseException as exc:
        _starting.pop(loop).set_exception(exc)
        raise
    return runtime


class Draining(protocol.ChatimgError):
    """This process is shutting down: a new turn belongs on another (or after a reconnect)."""

    def __init__(self) -> None:
        super().__init__(
            "server_draining", "This server is restarting; your message will be sent again."
        )


def refuse_if_draining() -> None:
    """For new turns: a process that drains takes none (its running ones finish)."""
    runtime = _runtimes.get(asyncio.get_running_loop())
    if runtime is not None and runtime.draining:
        raise Draining


async def stop(grace: float | None = None) -> None:
    """Drain: take no new turns, let running answers finish within `grace` seconds
    (CHATIMG_DRAIN_SECONDS), then interrupt what is left (its text is stored),
    and stop the receivers."""
    runtime = _runtimes.get(asyncio.get_running_loop())
    if runtime is None or runtime.draining:
        return
    runtime.draining = True
    grace = settings.DRAIN_SECONDS if grace is None else grace
    tasks = [turn.task for turn in runtime.running.values() if turn.task]
    if tasks:
        log.info("draining: %d answer(s) may take up to %g s to finish", len(tasks), grace)
        await asyncio.wait(tasks, timeout=grace)
    left = list(runtime.running.values())
    for turn in left:
        turn.interrupt()
    await asyncio.gather(*(t.task for t in left if t.task), return_exceptions=True)
    _runtimes.pop(asyncio.get_running_loop(), None)
    for task in runtime.tasks:
        task.cancel()
    await asyncio.gather(*runtime.tasks, return_exceptions=True)
    leases = instances.leases()
    if leases is not None:
        # Everything it ran is stored: the others need not wait for the lease to lapse.
        with contextlib.suppress(Exception):
            await leases.release()
    try:
        await llm.close_clients()
    except Exception as exc:  # the process ends anyway: its sockets close with it
        log.warning("closing the model clients failed: %s", exc)
    await asyncio.to_thread(dbpool.close)  # last: nothing after it may open a connection


def _stop_with_the_server() -> None:
    """Under daphne, stop before its reactor shuts down (SIGTERM, SIGINT), not after.

    Only when a Twisted reactor is already installed and running: tests that
    drive the ASGI app directly have none, and must not get one by import.
    """
    reactor: Any = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return
    from twisted.internet.defer import Deferred

    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromFuture(asyncio.ensure_future(stop()))
    )


def _background(runtime: _Runtime, coroutine: Coroutine[Any, Any, Any]) -> None:
    """Run a task of the process, holding a reference so that it is not collected."""
    task = asyncio.get_running_loop().create_task(coroutine)
    runtime.tasks.add(task)
    task.add_done_callback(runtime.tasks.discard)


async def launch(context: TurnContext) -> Turn:
    """Start a turn as a task of this process (it outlives the calling socket)."""
    runtime = await _runtime()
    turn = Turn(context)
    runtime.running[context.conversation_id] = turn

    async def run() -> None:
        try:
            await turn.run()
        finally:
            runtime.running.pop(context.conversation_id, None)
        if turn.wants_title:
            # After the answer, not before: a title must never delay the text.
            _background(runtime, turn.retitle())

    turn.task = asyncio.get_running_loop().create_task(run())
    return turn


async def publish(conversation_id: uuid.UUID, frame: str) -> None:
    """Send one protocol frame to everyone following the conversation, on any process."""
    await delivery.publish(conversation_id, delivery.frame_event(frame))


def running(conversation_id: uuid.UUID) -> Turn | None:
    runtime = _runtimes.get(asyncio.get_running_loop())
    return runtime.running.get(conversation_id) if runtime else None


async def request_cancel(conversation_id: uuid.UUID) -> None:
    """Stop the conversation's answer wherever it runs, or at once if nothing runs it."""
    turn = running(conversation_id)
    if turn is not None:
        turn.cancel()
        return
    owner = (
        await Message.objects.filter(
            conversation_id=conversation_id, status=Message.Status.STREAMING
        )
        .values_list("owner", flat=True)
        .afirst()
    )
    if owner is None:
        return  # nothing streams: it ended meanwhile
    leases = instances.leases()
    if owner != instances.INSTANCE and leases is not None:
        try:
            channel = (await leases.channels([owner]))[owner]
        except Exception as exc:  # Redis away: the owner cannot be reached, nor renew
            log.warning("Stop: the owner's lease could not be read (%s); ending it here", exc)
            channel = None
        if channel is not None:
            # The owner lives: it stops its turn, or ends the answer if it has none.
            await get_channel_layer().send(
                channel,
                {"type": "turn.cancel", "conversation_id": str(conversation_id), "owner": owner},
            )
            return
    # Its owner is this process (without the turn), or gone, or there is one
    # process (no Redis): no turn runs it anywhere. End it now, with its text.
    await end_orphan(conversation_id, owner)


async def end_orphan(conversation_id: uuid.UUID, owner: str) -> None:
    """The user's Stop on an answer no process runs: `cancelled` at once, with its text."""
    closed = await database_sync_to_async(_close_orphan)(conversation_id, owner)
    await _tell_closed(closed)


async def _serve_control(runtime: _Runtime) -> None:
    layer = get_channel_layer()
    while True:
        request = await layer.receive(runtime.channel)
        try:
            conversation_id = uuid.UUID(request["conversation_id"])
            turn = runtime.running.get(conversation_id)
            if request["type"] != "turn.cancel":
                continue
            if turn is not None:
                turn.cancel()
            elif request.get("owner") == instances.INSTANCE:
                await end_orphan(conversation_id, instances.INSTANCE)
        except Exception:
            log.exception("bad turn control request %r", request)


async def sweep_stale_turns() -> int:
    """Close answers whose process died (no heartbeat lately), and tell whoever follows them."""
    closed = await database_sync_to_async(_close_stale)()
    await _tell_closed(closed)
    return len(closed)


async def sweep_orphans(leases: instances.Leases) -> int:
    """Close the answers of processes whose lease lapsed, and tell whoever follows them."""
    owners = await database_sync_to_async(Message.objects.streaming_owners)()
    owners -= {instances.INSTANCE, ""}  # this process knows its own; "" predates owners
    if not owners:
        return 0
    dead = [owner for owner, channel in (await leases.channels(owners)).items() if not channel]
    if not dead or not await leases.trustworthy():
        return 0
    log.warning("closing the answers of %d process(es) whose lease lapsed: %s", len(dead), dead)
    closed = await database_sync_to_async(_close_orphans)(dead)
    await _tell_closed(closed)
    return len(closed)


async def _tell_closed(closed: list[tuple[Message, str]]) -> None:
    for message, html in closed:
        conversation_id = message.conversation_id
        # The text a follower lacks first (each trims what it holds), then the end.
        text = delivery.delta_event(conversation_id, message.pk, 0, message.text)
        await delivery.publish(conversation_id, text)
        frame = protocol.final_frame(message, html)
        await delivery.publish(conversation_id, delivery.frame_event(frame, ends=message.pk))
        try:
            await streams.streams().finish(message.pk)
        except Exception as exc:
            log.warning("answer %s: closing its stream failed: %s", message.pk, exc)


def _with_html(closed: list[Message]) -> list[tuple[Message, str]]:
    answers = Message.objects.prefetch_related("tool_invocations__images__parents").filter(
        pk__in=[message.pk for message in closed]
    )
    return [(answer, answer.body_html()) for answer in answers]


def _close_stale() -> list[tuple[Message, str]]:
    return _with_html(Message.objects.mark_stale_interrupted(text_of=streams.recovered_text))


def _close_orphans(owners: list[str]) -> list[tuple[Message, str]]:
    return _with_html(
        Message.objects.mark_orphans_interrupted(owners, text_of=streams.recovered_text)
    )


def _close_orphan(conversation_id: uuid.UUID, owner: str) -> list[tuple[Message, str]]:
    closed = Message.objects.close_orphan(
        conversation_id, Message.Status.CANCELLED, text_of=streams.recovered_text, owner=owner
    )
    return _with_html(closed)


async def _keep_lease(leases: instances.Leases, channel: str) -> None:
    while True:
        await asyncio.sleep(instances.RENEW_SECONDS)
        try:
            await leases.renew(channel)
        except Exception as exc:  # Redis away: nobody can read it lapse either
            log.warning("renewing this process's lease failed: %s", exc)


async def _sweep_orphans_forever(leases: instances.Leases) -> None:
    while True:
        await asyncio.sleep(instances.SWEEP_SECONDS)
        try:
            await sweep_orphans(leases)
        except Exception as exc:
            log.warning("sweeping orphaned answers failed: %s", exc)


async def _sweep_forever() -> None:
    while True:
        try:
            await sweep_stale_turns()
        except Exception:
            log.exception("sweeping stale answers failed")
        await asyncio.sleep(max(1.0, settings.STALE_TURN_SECONDS / 2))
