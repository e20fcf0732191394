"""An answer's text while it streams, kept outside the process that writes it.

Every coalesced delta is appended here as it is published, so that a process
that dies mid-answer loses at most the delta it had not yet appended (one
coalescing window), not everything since its last database checkpoint:
recovery rebuilds the text from the checkpoint and the stream (by offset).

- With Redis: one Redis stream per answer (`XADD`, bounded), expired soon
  after the answer ends. Any process can read it, and it is how an answer
  reaches followers on other processes (conversations/delivery.py): its
  events (tool calls, the end) are entries too, in order with the text.
- Without Redis (the embedded stack, one process): one append-only file per
  answer in `CHATIMG_STREAM_DIR`, removed when the answer ends. A killed
  process's writes are already in the operating system's hands.
"""

from __future__ import annotations

import asyncio
import functools
import os
import weakref
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

#: An answer's stream outlives its end this long, for a late catch-up or sweep.
KEEP_AFTER_END_SECONDS = 300
#: Deltas kept per answer (a 2,000-token answer at 30-ms coalescing is ~300).
MAX_DELTAS = 20_000


class Streams(Protocol):
    async def append(self, message_id: int, offset: int, text: str) -> None: ...
    async def append_event(self, message_id: int, frame: str, *, mark: str = "") -> None: ...
    async def finish(self, message_id: int) -> None: ...
    def deltas(self, message_id: int) -> list[tuple[int, str]]: ...
    async def read_deltas(self, message_id: int) -> list[tuple[int, str]]: ...


#: One entry of an answer's stream, as a remote reader gets it.
Entry = dict[str, Any]  # {"offset", "text"} | {"frame", "mark"}
#: An event's mark: the answer's first event (it starts, or starts again: a
#: continuation) and its last (the final frame, after which nothing comes).
START, END = "start", "end"


def _entry(fields: dict[bytes, bytes]) -> Entry:
    if b"o" in fields:
        return {"offset": int(fields[b"o"]), "text": fields[b"t"].decode()}
    return {"frame": fields[b"f"].decode(), "mark": fields.get(b"x", b"").decode()}


def rebuild(base: str, deltas: list[tuple[int, str]]) -> str:
    """The checkpointed text, carried on by the deltas recorded after it."""
    text = base
    for offset, piece in deltas:
        if offset <= len(text):
            text = text[:offset] + piece if offset + len(piece) > len(text) else text
    return text


class _Writes:
    """The stream entries of every answer on one event loop, written together:
    those queued while a pipeline is out go in the next one, one round trip
    for all of them (one XADD per call was a round trip per delta per answer).

    Each caller awaits its own entry's write, so a crash still loses at most
    the delta not yet written. An answer's entries keep their order: its turn
    awaits each before the next (the coalescer's lock), and pipelines go out
    one at a time.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.queued: list[tuple[str, dict[str, Any], asyncio.Future[None]]] = []
        self.writing: asyncio.Task[None] | None = None

    async def add(self, key: str, fields: dict[str, Any]) -> None:
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queued.append((key, fields, written))
        if self.writing is None:
            self.writing = asyncio.create_task(self._write())
        await written

    async def _write(self) -> None:
        batch: list[tuple[str, dict[str, Any], asyncio.Future[None]]] = []
        try:
            while self.queued:
                batch, self.queued = self.queued, []
                try:
                    results = await self._send([(key, fields) for key, fields, _ in batch])
                except Exception as exc:  # Redis away: every caller of this batch hears it
                    results = [exc] * len(batch)
                for (_, _, written), result in zip(batch, results, strict=True):
                    if written.done():  # its caller was cancelled meanwhile
                        continue
                    if isinstance(result, Exception):
                        written.set_exception(result)
                    else:
                        written.set_result(None)
        finally:
            self.writing = None
            # Left waiting only if this task was cancelled (the loop closes): the
            # batch that was out and what was queued meanwhile are cancelled too.
            left, self.queued = batch + self.queued, []
            for _, _, written in left:
                if not written.done():
                    written.cancel()

    async def _send(self, entries: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        if len(entries) == 1:  # alone (a quiet server): a command costs less than a pipeline
            key, fields = entries[0]
            return [await self.client.xadd(key, fields, maxlen=MAX_DELTAS, approximate=True)]
        async with self.client.pipeline(transaction=False) as pipe:
            for key, fields in entries:
                pipe.xadd(key, fields, maxlen=MAX_DELTAS, approximate=True)
            return list(await pipe.execute(raise_on_error=False))


class RedisStreams:
    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.sync = redis.Redis.from_url(url)  # recovery, on a database thread
        # An asyncio client belongs to the event loop that made it.
        self._live: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]
        self._live = weakref.WeakKeyDictionary()
        self._writes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writes]
        self._writes = weakref.WeakKeyDictionary()

    @property
    def live(self) -> Any:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        if loop not in self._live:
            self._live[loop] = redis.asyncio.Redis.from_url(self.url)
        return self._live[loop]

    @property
    def writes(self) -> _Writes:
        loop = asyncio.get_running_loop()
        if loop not in self._writes:
            self._writes[loop] = _Writes(self.live)
        return self._writes[loop]

    def key(self, message_id: int) -> str:
        return f"{self.prefix}:answer:{message_id}"

    async def append(self, message_id: int, offset: int, text: str) -> None:
        # The key's expiry came with the answer's start (XADD keeps it).
        await self.writes.add(self.key(message_id), {"o": offset, "t": text})

    async def append_event(self, message_id: int, frame: str, *, mark: str = "") -> None:
        key = self.key(message_id)
        fields = {"f": frame, "x": mark} if mark else {"f": frame}
        if mark != START:
            await self.writes.add(key, fields)
            return
        async with self.live.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, maxlen=MAX_DELTAS, approximate=True)
            pipe.expire(key, 86_400)  # never kept for ever, even if its end is lost
            await pipe.execute()

    async def finish(self, message_id: int) -> None:
        await self.live.expire(self.key(message_id), KEEP_AFTER_END_SECONDS)

    def deltas(self, message_id: int) -> list[tuple[int, str]]:
        entries: Any = self.sync.xrange(self.key(message_id))
        return [(int(f[b"o"]), f[b"t"].decode()) for _, f in entries if b"o" in f]

    async def read_deltas(self, message_id: int) -> list[tuple[int, str]]:
        entries: Any = await self.live.xrange(self.key(message_id))
        return [(int(f[b"o"]), f[b"t"].decode()) for _, f in entries if b"o" in f]

    async def tail(self, message_id: int) -> str:
        """The id of the stream's last entry ("0-0" for none): where a reader starts."""
        entries: Any = await self.live.xrevrange(self.key(message_id), count=1)
        return entries[0][0].decode() if entries else "0-0"

    async def follow(self, message_id: int, after: str, block_ms: int) -> tuple[str, list[Entry]]:
        """The entries after `after` (waiting up to `block_ms` for one), and the new position."""
        found: Any = await self.live.xread({self.key(message_id): after}, block=block_ms, count=500)
        entries: list[Entry] = []
        for _key, rows in found or ():
            for entry_id, fields in rows:
                after = entry_id.decode()
                entries.append(_entry(fields))
        return after, entries


#: Files kept open at once (one per streaming answer); past it, opened per delta.
OPEN_FILES = 256


class FileStreams:
    """One file per answer: lines of `offset<TAB>json-escaped text`."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        # A streaming answer's file stays open until its end: opening and
        # closing it for every delta was a tenth of a process's CPU per token
        # (bench/, 100 streams). Bounded, for laptops' low descriptor limits.
        self._open: dict[int, int] = {}

    def path(self, message_id: int) -> Path:
        return self.directory / f"{message_id}.stream"

    async def append(self, message_id: int, offset: int, text: str) -> None:
        # One small write(2) with O_APPEND: no thread hop, and a killed
        # process's bytes are already the kernel's.
        line = f"{offset}\t{text.encode('unicode_escape').decode('ascii')}\n".encode()
        fd = self._open.get(message_id)
        if fd is not None:
            os.write(fd, line)
            return
        fd = os.open(self.path(message_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if len(self._open) < OPEN_FILES:
            self._open[message_id] = fd
            os.write(fd, line)
            return
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    async def append_event(self, message_id: int, frame: str, *, mark: str = "") -> None:
        """Nothing: without Redis there is one process, and its followers get events in-process."""

    async def finish(self, message_id: int) -> None:
        fd = self._open.pop(message_id, None)
        if fd is not None:
            os.close(fd)
        self.path(message_id).unlink(missing_ok=True)

    async def read_deltas(self, message_id: int) -> list[tuple[int, str]]:
        return self.deltas(message_id)  # a small local file: no thread hop

    def deltas(self, message_id: int) -> list[tuple[int, str]]:
        try:
            lines = self.path(message_id).read_bytes().decode("ascii").splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            offset, _, escaped = line.partition("\t")
            if offset.isdigit():  # a line cut by the crash itself is skipped
                found.append((int(offset), escaped.encode("ascii").decode("unicode_escape")))
        return found


def streams() -> Streams:
    """The answer streams of the configured stack (one client per configuration)."""
    return _streams(settings.REDIS_URL, settings.REDIS_PREFIX, settings.STREAM_DIR)


@functools.cache
def _streams(redis_url: str, prefix: str, directory: str) -> Streams:
    if redis_url:
        return RedisStreams(redis_url, prefix)
    Path(directory).mkdir(parents=True, exist_ok=True)
    return FileStreams(directory)


async def live_text(message: Any) -> str:
    """What the answer's turn has published so far, on any process, without asking it:
    the checkpoint in `message` carried on by the stream."""
    try:
        return rebuild(message.text, await streams().read_deltas(message.pk))
    except Exception:  # Redis away: the checkpoint is what there is
        return str(message.text)


def recovered_text(message: Any) -> str:
    """What a dead process had published of `message`: checkpoint plus stream."""
    try:
        return rebuild(message.text, streams().deltas(message.pk))
    except Exception:  # an unreachable Redis must not stop recovery: the checkpoint stands
        return str(message.text)
