"""Record what real OpenAI-compatible servers send for chatimg's chat requests.

Starts each server itself on a free loopback port, sends the requests chatimg
sends (streaming, ``stream_options.include_usage``, the ``generate_image``
tool), and stores every response body byte for byte, with a JSON sidecar
saying how it was made. The conformance tests replay these bytes through the
app's stream reader (tests/test_provider_conformance.py).

    .venv/bin/python tests/recordings/record.py \\
        --llama-python /work/tools/llama/bin/python \\
        --model /work/tools/gemma/gemma-3-270m-q4_k_m.gguf \\
        --litellm .venv-litellm/bin/litellm

Servers recorded (each is skipped when its option is missing):

* llama-cpp-python's server (``python -m llama_cpp.server``, chatml-function-calling);
* LiteLLM's proxy in front of that llama-cpp-python server;
* LiteLLM's proxy in front of the project's fake (``OfflineModelServer``), scripted
  for what the small model cannot be made to do (text then a tool call, two tool
  calls, tool calls when none were offered). The bytes are LiteLLM's.

Bodies are stored after HTTP transfer decoding (chunked framing removed); when the
connection broke mid-body, the bytes received before it and the client's error
are stored (``transport_error``), and the replay server reproduces the break.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

# What chatimg sends with its default settings (chatimg/settings.py SYSTEM_PROMPT,
# conversations/images.py tool_schema() for the default image model).
SYSTEM_PROMPT = (
    "You are a helpful assistant in a chat app that can draw. When the user asks for a "
    "picture, call the generate_image tool with a detailed prompt, then say one short "
    "sentence about the result. Use Markdown for formatting."
)
TOOL = {
    "type": "function",
    "function": {
        "name": "generate_image",
        "description": "Generate an image from a detailed text description and show it "
        "to the user in the chat.",
        "parameters": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "description": "A detailed description of the image."}
            },
            "required": ["prompt"],
        },
    },
}
FORCE_TOOL = {"type": "function", "function": {"name": "generate_image"}}
DRAW = "draw a lighthouse at dusk"

RECORDER_COMMAND = shlex.join([Path(sys.executable).name, *sys.argv])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool], seconds: float, what: str, proc: Process | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.process.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def answers(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status < 500
    except OSError:
        return False


def chat_body(model: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, *messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(extra)
    return body


def non_streaming(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}


def post_stream(
    port: int,
    body: dict[str, Any],
    *,
    key: str = "sk-recorder",
    on_bytes: Callable[[bytes], None] | None = None,
) -> tuple[int, dict[str, str], bytes, str | None]:
    """POST, read the whole body (de-chunked), and return what arrived and how it ended."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    payload = json.dumps(body).encode()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=payload,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key}",
            "Accept": "application/json",
        },
    )
    response = conn.getresponse()
    headers = {k.lower(): v for k, v in response.getheaders()}
    received = bytearray()
    error = None
    try:
        while True:
            piece = response.read1(65536)
            if not piece:
                break
            received += piece
            if on_bytes is not None:
                on_bytes(bytes(received))
    except (http.client.HTTPException, OSError) as exc:
        partial = getattr(exc, "partial", b"")
        received += partial or b""
        error = f"{type(exc).__name__}: {exc}"
    conn.close()
    return response.status, headers, bytes(received), error


class Recorder:
    def __init__(self, out: Path, server: str, version: str, model: str, command: str) -> None:
        self.dir = out / f"{server}-{version}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.server, self.version, self.model, self.command = server, version, model, command
        self.upstream: str | None = None
        self.upstream_command: str | None = None
        self.key = "sk-recorder"
        self.only: set[str] = set()  # --scenario: record these, keep the others as they are

    def record(
        self,
        name: str,
        description: str,
        body: dict[str, Any],
        *,
        port: int,
        on_bytes: Callable[[bytes], None] | None = None,
        notes: str = "",
    ) -> bytes:
        if self.only and name not in self.only:
            kept = self.dir / f"{name}.body"
            return kept.read_bytes() if kept.exists() else b""
        status, headers, data, error = post_stream(port, body, key=self.key, on_bytes=on_bytes)
        (self.dir / f"{name}.body").write_bytes(data)
        sidecar = {
            "scenario": name,
            "description": description,
            "server": self.server,
            "version": self.version,
            "model": self.model,
            "upstream": self.upstream,
            "status": status,
            "content_type": headers.get("content-type"),
            "transfer_encoding": headers.get("transfer-encoding"),
            "transport_error": error,
            "request": body,
            "server_command": self.command,
            "upstream_command": self.upstream_command,
            "recorder_command": RECORDER_COMMAND,
            "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "notes": notes,
        }
        (self.dir / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        print(f"  {self.dir.name}/{name}: {status} {len(data)} bytes {error or ''}", flush=True)
        return data


# --- the servers ------------------------------------------------------------------


class Process:
    """A server subprocess with its log in a temp dir; stopped by `stop()`."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.argv, self.env, self.cwd, self.log = argv, env, cwd, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def llama_server(python: str, model: str, tmp: Path) -> Iterator[tuple[Process, int, str]]:
    port = free_port()
    config = {
        "host": "127.0.0.1",
        "port": port,
        "models": [
            {
                "model": model,
                "model_alias": "gemma-3-270m",
                "chat_format": "chatml-function-calling",
                "n_ctx": 2048,
                "n_threads": 2,
                "seed": 7,
                "verbose": False,
            }
        ],
    }
    cfg = tmp / "llama-cfg.json"
    cfg.write_text(json.dumps(config))
    argv = [python, "-m", "llama_cpp.server", "--config_file", str(cfg)]
    proc = Process(argv, dict(os.environ), tmp, tmp / "llama.log")
    proc.start()
    try:
        wait_until(lambda: answers(port, "/v1/models"), 120, "llama-cpp-python's server", proc)
        command = f"{shlex.join(argv)}  # {cfg.name}: {json.dumps(config)}"
        yield proc, port, command
    finally:
        proc.stop()


@contextlib.contextmanager
def litellm_proxy(
    litellm: str, model: str, api_base: str, tmp: Path
) -> Iterator[tuple[int, str, str]]:
    port = free_port()
    key = f"sk-{secrets.token_hex(16)}"  # LiteLLM refuses to start without a master key
    config = (
        "general_settings:\n"
        f"  master_key: {key}\n"
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {api_base}\n"
        "      api_key: sk-upstream\n"
    )
    cfg = tmp / f"litellm-{port}.yaml"
    cfg.write_text(config)
    argv = [litellm, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    env = {  # LiteLLM reads DATABASE_URL and REDIS_* too: not its own here
        **{
            key: value
            for key, value in os.environ.items()
            if key not in ("DATABASE_URL", "REDIS_URL", "DIRECT_URL")
            and not key.startswith(("LITELLM_", "REDIS_", "OPENAI_", "AZURE_"))
        },
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    proc = Process(argv, env, tmp, tmp / f"litellm-{port}.log")
    proc.start()
    try:
        wait_until(lambda: answers(port, "/health/liveliness"), 180, "LiteLLM's proxy", proc)
        shown = config.replace(key, "sk-<random per run>")
        command = f"LITELLM_LOCAL_MODEL_COST_MAP=True {shlex.join(argv)}  # {cfg.name}:\n{shown}"
        yield port, command, key
    finally:
        proc.stop()


def version_of(python: str, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return result.stdout.strip()


# --- the scenarios ----------------------------------------------------------------


def tool_round(call_id: str, arguments: str, content: str | None) -> list[dict[str, Any]]:
    """The follow-up request's messages after one generate_image call, as chatimg builds them."""
    result = {
        "status": "ok",
        "image_id": "6f1d2c3e-0000-4000-8000-000000000001",
        "prompt": json.loads(arguments, strict=False).get("prompt", DRAW) if arguments else DRAW,
        "revised_prompt": "",
        "images_left_today": 49,
    }
    return [
        {"role": "user", "content": DRAW},
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "generate_image", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
    ]


def first_tool_call(data: bytes) -> tuple[str, str]:
    """The first call's id and arguments in a recorded stream (for the follow-up request)."""
    call_id, arguments = "", ""
    for line in data.decode().splitlines():
        if not line.startswith("data: {"):
            continue
        for choice in json.loads(line[6:]).get("choices") or ():
            for part in (choice.get("delta") or {}).get("tool_calls") or ():
                if part.get("index", 0) == 0:
                    call_id = call_id or part.get("id") or ""
                    arguments += (part.get("function") or {}).get("arguments") or ""
    return call_id, arguments


def after_events(count: int, action: Callable[[], None]) -> Callable[[bytes], None]:
    """An on_bytes hook that runs `action` once, when `count` SSE events have arrived."""
    done = False

    def hook(received: bytes) -> None:
        nonlocal done
        if not done and received.count(b"\n\n") >= count:
            done = True
            action()

    return hook


OVERFLOW = "Describe this list. " + " ".join(f"item{i} alpha beta gamma" for i in range(900))
LONG = "Write a long story about a lighthouse keeper and the sea, in many paragraphs."


def model_scenarios(rec: Recorder, port: int, model: str) -> None:
    """What a real model server gives for each scenario (llama-cpp-python, direct or proxied)."""
    say = [{"role": "user", "content": "Say hello in five words."}]
    rec.record(
        "text",
        "chatimg's plain request (tools offered, no tool_choice): streamed text",
        chat_body(model, say, tools=[TOOL], max_tokens=200),
        port=port,
    )
    draw = [{"role": "user", "content": DRAW}]
    rec.record(
        "tools-offered-no-choice",
        "a drawing request as chatimg sends it (tools, no tool_choice)",
        chat_body(model, draw, tools=[TOOL], max_tokens=200),
        port=port,
        notes="llama-cpp-python's chatml-function-calling ignores tools when tool_choice is "
        "absent: it answers with text.",
    )
    data = rec.record(
        "tool-call",
        "tool_choice naming generate_image forces one tool call (no text)",
        chat_body(model, draw, tools=[TOOL], tool_choice=FORCE_TOOL, max_tokens=200, temperature=0),
        port=port,
        notes="temperature 0: with the default sampling the small model once wrote a raw "
        "newline inside the arguments' JSON string (kept as tool-call-raw-newline).",
    )
    rec.record(
        "tool-choice-auto",
        'tool_choice "auto" while streaming',
        chat_body(model, draw, tools=[TOOL], tool_choice="auto", max_tokens=200),
        port=port,
        notes="llama-cpp-python raises 'Automatic streaming tool choice is not supported' "
        "when the model picks a function: the client sees what is recorded here.",
    )
    call_id, arguments = first_tool_call(data)
    rec.record(
        "follow-up",
        'the turn after the tool round; the assistant message has "content": ""',
        chat_body(model, tool_round(call_id, arguments, ""), tools=[TOOL], max_tokens=200),
        port=port,
    )
    rec.record(
        "follow-up-content-null",
        'the same follow-up with "content": null in the assistant message',
        chat_body(model, tool_round(call_id, arguments, None), tools=[TOOL], max_tokens=200),
        port=port,
    )
    rec.record(
        "length",
        "max_tokens 8 on a long answer: finish_reason length",
        chat_body(model, [{"role": "user", "content": LONG}], tools=[TOOL], max_tokens=8),
        port=port,
    )
    rec.record(
        "overflow",
        "a prompt longer than the context window (n_ctx 2048)",
        chat_body(model, [{"role": "user", "content": OVERFLOW}], tools=[TOOL]),
        port=port,
    )
    # What chatimg asks next when a stream to a request with tools came back empty:
    # the same request without streaming.
    rec.record(
        "tool-choice-auto-non-streaming",
        'tool_choice "auto" without streaming (chatimg\'s retry after an empty stream)',
        non_streaming(chat_body(model, draw, tools=[TOOL], tool_choice="auto", max_tokens=200)),
        port=port,
    )
    rec.record(
        "two-tool-calls-non-streaming",
        'asked for two pictures, tool_choice "auto", without streaming',
        non_streaming(
            chat_body(
                model,
                [{"role": "user", "content": "draw a lighthouse at dusk and a lighthouse at dawn"}],
                tools=[TOOL],
                tool_choice="auto",
                max_tokens=200,
            )
        ),
        port=port,
        notes="whether the small model calls the tool once or twice is its choice",
    )
    rec.record(
        "overflow-non-streaming",
        "the overflowing request without streaming (chatimg's retry after an empty stream)",
        non_streaming(chat_body(model, [{"role": "user", "content": OVERFLOW}], tools=[TOOL])),
        port=port,
    )


def record_llama(args: argparse.Namespace, out: Path, tmp: Path) -> None:
    version = version_of(args.llama_python, "llama-cpp-python")
    print(f"== llama-cpp-python {version}", flush=True)
    with llama_server(args.llama_python, args.model, tmp) as (proc, port, command):
        rec = Recorder(out, "llama-cpp-python", version, "gemma-3-270m-q4_k_m.gguf", command)
        rec.only = set(args.scenario or ())
        model_scenarios(rec, port, "gemma-3-270m")
        rec.record(
            "cut",
            "the server process is killed (SIGKILL) after 4 events of a long answer",
            chat_body("gemma-3-270m", [{"role": "user", "content": LONG}], max_tokens=300),
            port=port,
            on_bytes=after_events(4, proc.kill),
        )


def record_litellm_llama(args: argparse.Namespace, out: Path, tmp: Path) -> None:
    version = version_of(str(Path(args.litellm).parent / "python"), "litellm")
    llama_version = version_of(args.llama_python, "llama-cpp-python")
    print(f"== LiteLLM {version} in front of llama-cpp-python {llama_version}", flush=True)
    with llama_server(args.llama_python, args.model, tmp) as (proc, llama_port, llama_cmd):
        base = f"http://127.0.0.1:{llama_port}/v1"
        with litellm_proxy(args.litellm, "gemma-3-270m", base, tmp) as (port, command, key):
            rec = Recorder(out, "litellm", version, "openai/gemma-3-270m", command)
            rec.key = key
            rec.dir = rec.dir / "via-llama-cpp-python"
            rec.dir.mkdir(parents=True, exist_ok=True)
            rec.upstream = f"llama-cpp-python {llama_version}"
            rec.upstream_command = llama_cmd
            rec.only = set(args.scenario or ())
            model_scenarios(rec, port, "gemma-3-270m")
            rec.record(
                "cut",
                "the upstream llama-cpp-python server is killed (SIGKILL) after LiteLLM "
                "relayed 4 events of a long answer",
                chat_body("gemma-3-270m", [{"role": "user", "content": LONG}], max_tokens=300),
                port=port,
                on_bytes=after_events(4, proc.kill),
            )


def record_litellm_fake(args: argparse.Namespace, out: Path, tmp: Path) -> None:
    from offline_model import OfflineModelServer, Reply, ToolCall

    version = version_of(str(Path(args.litellm).parent / "python"), "litellm")
    print(f"== LiteLLM {version} in front of chatimg's fake (OfflineModelServer)", flush=True)
    with (
        OfflineModelServer() as fake,
        litellm_proxy(args.litellm, "gpt-test", fake.base_url, tmp) as (port, command, key),
    ):
        rec = Recorder(out, "litellm", version, "openai/gpt-test", command)
        rec.key = key
        rec.dir = rec.dir / "via-chatimg-fake"
        rec.dir.mkdir(parents=True, exist_ok=True)
        rec.upstream = "chatimg offline_model.OfflineModelServer (scripted)"
        rec.only = set(args.scenario or ())
        draw = [{"role": "user", "content": DRAW}]
        lighthouse = {"prompt": "a lighthouse at dusk, warm light over a calm sea"}
        scripted = [
            (
                "text",
                "streamed text",
                Reply(text="Hello! How can I help you today?"),
                [{"role": "user", "content": "Hi!"}],
                True,
            ),
            (
                "text-then-tool-call",
                "a sentence, then one generate_image call",
                Reply(
                    text="Sure, here is a lighthouse at dusk.",
                    tool_calls=[ToolCall(arguments=lighthouse, id="call_fake_lighthouse")],
                ),
                draw,
                True,
            ),
            (
                "tool-call",
                "one generate_image call, no text",
                Reply(tool_calls=[ToolCall(arguments=lighthouse, id="call_fake_only")]),
                draw,
                True,
            ),
            (
                "two-tool-calls",
                "two generate_image calls in one answer",
                Reply(
                    text="Two pictures coming up.",
                    tool_calls=[
                        ToolCall(arguments={"prompt": "a lighthouse at dusk"}, id="call_a"),
                        ToolCall(arguments={"prompt": "a lighthouse at dawn"}, id="call_b"),
                    ],
                ),
                [{"role": "user", "content": "draw a lighthouse at dusk and at dawn"}],
                True,
            ),
            (
                "tool-call-not-offered",
                "the upstream returns a generate_image call although the request offered no tools",
                Reply(tool_calls=[ToolCall(arguments=lighthouse, id="call_unasked")]),
                draw,
                False,
            ),
            (
                "cut",
                "the upstream drops the connection after 3 text chunks (no finish, no [DONE])",
                Reply(text="This answer will be cut off in the middle of it.", cut_after=3),
                [{"role": "user", "content": "Hi!"}],
                True,
            ),
        ]
        for name, description, reply, messages, offer in scripted:
            if rec.only and name not in rec.only:
                continue  # not scripted either: the fake's queue must match the requests
            fake.script_chat(reply)
            extra = {"tools": [TOOL]} if offer else {}
            rec.record(
                name,
                description,
                chat_body("gpt-test", messages, **extra),
                port=port,
                notes=f"upstream scripted as {reply!r}",
            )
        # The follow-up after the text-then-tool-call round, with "content": "" and null.
        follow_ups = (
            ("Sure, here is a lighthouse at dusk.", ""),
            ("", "-content-empty"),
            (None, "-content-null"),
        )
        for content, suffix in follow_ups:
            if rec.only and f"follow-up{suffix}" not in rec.only:
                continue
            fake.script_chat(Reply(text="Here is your lighthouse at dusk."))
            messages = tool_round("call_fake_lighthouse", json.dumps(lighthouse), content)
            rec.record(
                f"follow-up{suffix}",
                f"the turn after the tool round; assistant content {content!r}",
                chat_body("gpt-test", messages, tools=[TOOL]),
                port=port,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-python", help="python of a venv with llama-cpp-python[server]")
    parser.add_argument("--model", help="the GGUF model file for llama-cpp-python")
    parser.add_argument("--litellm", help="the litellm executable (scripts/install_test_servers)")
    parser.add_argument(
        "--only", choices=["llama", "litellm-llama", "litellm-fake"], action="append"
    )
    parser.add_argument(
        "--scenario", action="append", help="record only these scenarios (repeatable)"
    )
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    out = Path(args.out)
    # The servers run in a temp dir: make the paths absolute first.
    for name in ("llama_python", "model", "litellm"):
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).absolute()))
    only = set(args.only or ["llama", "litellm-llama", "litellm-fake"])
    with tempfile.TemporaryDirectory(prefix="chatimg-record-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            if "llama" in only and args.llama_python and args.model:
                record_llama(args, out, tmp)
            if "litellm-llama" in only and args.litellm and args.llama_python and args.model:
                record_litellm_llama(args, out, tmp)
            if "litellm-fake" in only and args.litellm:
                record_litellm_fake(args, out, tmp)
        except Exception:
            for log in sorted(tmp.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise


if __name__ == "__main__":
    main()
