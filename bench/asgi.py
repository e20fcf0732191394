"""The app as benchmarked: ``chatimg.asgi.application`` plus an SQL statement counter.

    python -m daphne -b 127.0.0.1 -p PORT bench.asgi:application

Every database connection the process opens gets an ``execute_wrapper`` that
counts statements by kind (INSERT, UPDATE, DELETE, SELECT, ...) and by table for
writes. ``GET /__bench/sql`` returns the counts as JSON, ``POST /__bench/sql``
returns them and starts over. The endpoint is answered here, in front of Django,
so reading it costs no query. Nothing else about the app changes.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from typing import Any

from django.db.backends.signals import connection_created

from chatimg.asgi import application as app_application

_lock = threading.Lock()
_kinds: Counter[str] = Counter()
_writes: Counter[str] = Counter()
_TABLE_RE = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.IGNORECASE)
WRITE_KINDS = {"INSERT", "UPDATE", "DELETE"}


def _count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    kind = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    with _lock:
        _kinds[kind] += 1
        if kind in WRITE_KINDS:
            match = _TABLE_RE.match(sql)
            _writes[f"{kind} {match.group(1) if match else '?'}"] += 1
    return execute(sql, params, many, context)


def _install(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


connection_created.connect(_install, weak=False)


def snapshot(reset: bool = False) -> dict[str, Any]:
    with _lock:
        data = {
            "kinds": dict(_kinds),
            "writes": dict(_writes),
            "write_total": sum(_kinds[k] for k in WRITE_KINDS),
        }
        if reset:
            _kinds.clear()
            _writes.clear()
    return data


async def application(scope: dict[str, Any], receive: Any, send: Any) -> Any:
    if scope["type"] == "http" and scope["path"] == "/__bench/sql":
        body = json.dumps(snapshot(reset=scope["method"] == "POST")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return None
    return await app_application(scope, receive, send)
