"""Summarise a ``py-spy record --format raw`` profile: top functions, self and inclusive.

.venv/bin/python -m bench.pyspy_top /tmp/pyspy-sqlite-memory-100.txt [--top 40] [--grep llm]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

_LINE_RE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^:]*)(?::\d+)?\)$")


def _key(frame: str) -> str:
    match = _FRAME_RE.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarise(path: str, top: int, grep: str | None) -> str:
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    with open(path) as raw:
        for line in raw:
            match = _LINE_RE.match(line.rstrip("\n"))
            if not match:
                continue
            count = int(match["count"])
            frames = [_key(f) for f in match["stack"].split(";") if f]
            # py-spy puts the thread name first; skip frames that are not code.
            frames = [f for f in frames if "(" in f]
            if not frames:
                continue
            total += count
            self_counts[frames[-1]] += count
            for name in set(frames):
                incl_counts[name] += count
    lines = [f"{total} samples", "", "self %  function"]
    for name, count in self_counts.most_common(top):
        if grep is None or grep in name:
            lines.append(f"{100 * count / total:5.1f}  {name}")
    lines += ["", "inclusive %  function"]
    for name, count in incl_counts.most_common(top * 3):
        if grep is None or grep in name:
            lines.append(f"{100 * count / total:5.1f}  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--grep")
    args = parser.parse_args()
    print(summarise(args.path, args.top, args.grep))


if __name__ == "__main__":
    main()
