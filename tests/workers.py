"""A pytest plugin: each xdist worker gets its own Redis keys.

scripts/test loads it with ``-p tests.workers``, so that it runs before
pytest-django reads the settings. Two workers must not share a Redis prefix:
the suite clears its own prefix between tests (``fresh_cache`` in conftest),
and the channel layer's user groups are named by user id, which every
worker's test database hands out from 1 again. Databases need nothing here:
pytest-django gives each worker its own test database (``_gw0``, ``_gw1``).
"""

from __future__ import annotations

import os

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    _base = os.environ.get("CHATIMG_REDIS_PREFIX", "chatimg-test")
    os.environ["CHATIMG_REDIS_PREFIX"] = f"{_base}-{_worker}"
