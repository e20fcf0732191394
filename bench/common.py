"""Pieces shared by the bench fake, the load client and the runner (no Django here)."""

from __future__ import annotations

import bisect
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from functools import lru_cache

# The user text that asks the bench fake for a reply: "bench tokens=500 delay=0.02 id=abc",
# optionally with the upstream's own time to first token: "... ttft=0.2 id=abc".
MARKER_RE = re.compile(
    r"bench tokens=(?P<tokens>\d+) delay=(?P<delay>[0-9.]+)(?: ttft=(?P<ttft>[0-9.]+))?"
    r" id=(?P<id>[\w-]+)"
)
# The user text that asks for one generate_image call; the image prompt carries the id.
IMAGE_MARKER_RE = re.compile(r"bench image id=(?P<id>[\w-]+)")


def marker(tokens: int, delay: float, bench_id: str, ttft: float | None = None) -> str:
    first = f" ttft={ttft:g}" if ttft is not None else ""
    return f"bench tokens={tokens} delay={delay:g}{first} id={bench_id}"


def image_marker(bench_id: str) -> str:
    return f"bench image id={bench_id}"


@lru_cache(maxsize=64)
def reply_tokens(count: int) -> tuple[str, ...]:
    """The exact streamed tokens of a bench reply: words, accents, CJK and astral emoji.

    Non-ASCII and non-BMP characters are in there on purpose: offsets count code
    points, so a server that counted UTF-16 units or bytes would be caught.
    """
    out = []
    for i in range(count):
        if i % 17 == 16:
            out.append("🙂 ")
        elif i % 11 == 10:
            out.append(f"café{i} ")
        elif i % 13 == 12:
            out.append(f"字{i}\n")
        else:
            out.append(f"w{i} ")
    return tuple(out)


@lru_cache(maxsize=64)
def reply_text(count: int) -> str:
    return "".join(reply_tokens(count))


@lru_cache(maxsize=64)
def token_ends(count: int) -> tuple[int, ...]:
    """ends[i] = character offset just after token i (code points)."""
    ends, total = [], 0
    for token in reply_tokens(count):
        total += len(token)
        ends.append(total)
    return tuple(ends)


def token_of_char(count: int, char_index: int) -> int:
    """Index of the token that contains character `char_index`."""
    return bisect.bisect_right(token_ends(count), char_index)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def machine_busy_seconds() -> float:
    """CPU time all cores spent not idle since boot (/proc/stat), in seconds."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def cpu_seconds_total(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


@dataclass
class CpuMeter:
    """CPU use of a set of processes over a window, as % of one core."""

    pids: dict[str, int]

    def __post_init__(self) -> None:
        self.start_wall = time.monotonic()
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.start_wall
        return {
            name: 100 * (cpu_seconds(pid) - self.start[name]) / wall
            for name, pid in self.pids.items()
        }
