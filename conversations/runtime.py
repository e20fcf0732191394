"""This process's turns: which run here, how other processes reach them, and the sweep.

Started explicitly (`start()`, from chatimg/asgi.py when the server takes its
first scope; stopped before the server shuts down), not as a side effect of a
socket. The arrow points one way: the runtime runs Turns; a Turn knows
nothing of the runtime.

- The registry: the turns of this process by conversation. Holding the task
  here is what keeps an answer alive after the socket that asked for it closed.
- The control receiver: one channel per process, in each running turn's
  control group, for cancel and snapshot requests from any process. Cancelling
  a pending channels-redis receive() mid-BZPOPMIN leaves the shared connection
  unusable for the process's other receivers, so turns do not each run (and
  cancel) a receiver of their own.
- Storage deletions that failed are retried (conversations/deletions.py).
- The sweep: answers whose process died (no heartbeat lately) are closed, and
  their followers told; at start-up and then periodically, in every process
  (it is idempotent).
"""

from __future__ import annotations

import asyncio
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

from conversations import dbpool, deletions, protocol, streams
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
    await asyncio.to_thread(dbpool.close)


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
    group = protocol.control_group(context.conversation_id)
    await get_channel_layer().group_add(group, runtime.channel)
    runtime.running[context.conversation_id] = turn

    async def run() -> None:
        try:
            await turn.run()
        finally:
            runtime.running.pop(context.conversation_id, None)
            await get_channel_layer().group_discard(group, runtime.channel)
        if turn.wants_title:
            # After the answer, not before: a title must never delay the text.
            _background(runtime, turn.retitle())

    turn.task = asyncio.get_running_loop().create_task(run())
    return turn


async def publish(conversation_id: uuid.UUID, frame: str) -> None:
    """Send one protocol frame to everyone following the conversation, on any process."""
    await get_channel_layer().group_send(
        protocol.group_name(conversation_id), {"type": "chat.event", "frame": frame}
    )


def running(conversation_id: uuid.UUID) -> Turn | None:
    runtime = _runtimes.get(asyncio.get_running_loop())
    return runtime.running.get(conversation_id) if runtime else None


async def request_cancel(conversation_id: uuid.UUID) -> None:
    """Cancel the conversation's turn wherever it runs (this or another process)."""
    turn = running(conversation_id)
    if turn is not None:
        turn.cancel()
        return
    await get_channel_layer().group_send(
        protocol.control_group(conversation_id),
        {"type": "turn.cancel", "conversation_id": str(conversation_id)},
    )


async def request_snapshot(conversation_id: uuid.UUID, reply_to: str) -> None:
    """Ask the turn's owner to send the text published so far to `reply_to`."""
    await get_channel_layer().group_send(
        protocol.control_group(conversation_id),
        {"type": "turn.snapshot", "conversation_id": str(conversation_id), "reply_to": reply_to},
    )


async def _serve_control(runtime: _Runtime) -> None:
    layer = get_channel_layer()
    while True:
        request = await layer.receive(runtime.channel)
        try:
            turn = runtime.running.get(uuid.UUID(request["conversation_id"]))
            if turn is None:
                continue  # finished meanwhile, or another process's turn
            if request["type"] == "turn.cancel":
                turn.cancel()
            elif request["type"] == "turn.snapshot":
                await turn.send_snapshot(request["reply_to"])
        except Exception:
            log.exception("bad turn control request %r", request)


async def sweep_stale_turns() -> int:
    """Close answers whose process died, and tell whoever follows them."""
    closed = await database_sync_to_async(_close_stale)()
    for message, html in closed:
        await publish(message.conversation_id, protocol.final_frame(message, html))
    return len(closed)


def _close_stale() -> list[tuple[Message, str]]:
    closed = Message.objects.mark_stale_interrupted(text_of=streams.recovered_text)
    answers = Message.objects.prefetch_related("tool_invocations__images__parents").filter(
        pk__in=[message.pk for message in closed]
    )
    return [(answer, answer.body_html()) for answer in answers]


async def _sweep_forever() -> None:
    while True:
        try:
            await sweep_stale_turns()
        except Exception:
            log.exception("sweeping stale answers failed")
        await asyncio.sleep(max(1.0, settings.STALE_TURN_SECONDS / 2))
