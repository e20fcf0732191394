"""chatimg-client against the real app: daphne in its own process, real websockets.

The app runs as a subprocess (tests/servers.py) over its own SQLite file and talks to
the OpenAI fake started here. The client runs in-process (``run()``) or as a command
(``python -m chatimg_client``); a user and API tokens are made with
``manage.py shell`` in the server's database, which is then read back with sqlite3.
Nothing is patched: a dropped connection is a real TCP proxy cutting real sockets.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sqlite3
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatimg_client import EXIT_OK, EXIT_UNAUTHENTICATED, run
from offline_model import OfflineModelServer, Reply
from tests.servers import REPO, AppServer, launch, server_env, stop

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the app, the fake model, a user with tokens -------------------------------------


@pytest.fixture(scope="module")
def model_server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as server:
        yield server


@pytest.fixture
def model(model_server: OfflineModelServer) -> OfflineModelServer:
    model_server.reset()
    return model_server


@pytest.fixture(scope="module")
def app(
    model_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AppServer]:
    tmp = tmp_path_factory.mktemp("chatimg-client")
    # No title requests: they would interleave with the requests the tests inspect.
    env = server_env(tmp, model_server.base_url, CHATIMG_LLM_TITLES="0")
    server = launch(env, tmp / "server.log")
    yield server
    if server.process is not None:
        stop(server.process)


def issue_tokens(app: AppServer) -> dict[str, str]:
    """A new user in the app's database, and raw API tokens: "laptop" and "old"."""
    code = (
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        "from conversations.models import ApiToken\n"
        "user = get_user_model().objects.create_user('cli-user', password='pw-cli-user')\n"
        "print(json.dumps({name: ApiToken.issue(user, name)[1] for name in ('laptop', 'old')}))"
    )
    return json.loads(app.manage("shell", "-c", code).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tokens(app: AppServer) -> dict[str, str]:
    return issue_tokens(app)


@pytest.fixture(scope="module")
def s3_app(
    model_server: OfflineModelServer, s3_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AppServer]:
    """A second app process that stores images in a private bucket (moto's S3 server)."""
    import boto3

    bucket = f"chatimg-client-{uuid.uuid4().hex[:8]}"
    keys = {"aws_access_key_id": "testing-access", "aws_secret_access_key": "testing-secret"}
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", **keys)
    s3.create_bucket(Bucket=bucket)
    tmp = tmp_path_factory.mktemp("chatimg-client-s3")
    env = server_env(
        tmp,
        model_server.base_url,
        CHATIMG_LLM_TITLES="0",
        S3_BUCKET=bucket,
        S3_ENDPOINT_URL=s3_server,
        S3_REGION="us-east-1",
        S3_ACCESS_KEY_ID=keys["aws_access_key_id"],
        S3_SECRET_ACCESS_KEY=keys["aws_secret_access_key"],
    )
    server = launch(env, tmp / "server.log")
    yield server
    if server.process is not None:
        stop(server.process)


# --- helpers ---------------------------------------------------------------------------


def conversation_of(err: str) -> str:
    match = re.search(r"conversation: ([0-9a-f-]{36})", err)
    assert match, f"no conversation id on stderr:\n{err}"
    return match.group(1)


def latest_answer(app: AppServer, conversation_id: str) -> str:
    """The text of the conversation's latest answer, as the server stored it."""
    with sqlite3.connect(app.db_path) as db:
        row = db.execute(
            "SELECT text FROM conversations_message WHERE conversation_id = ? "
            "AND role = 'assistant' ORDER BY id DESC LIMIT 1",
            (uuid.UUID(conversation_id).hex,),
        ).fetchone()
    assert row is not None, f"no answer in conversation {conversation_id}"
    return str(row[0])


def client_command(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the client as a user would, with none of the developer's CHATIMG_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHATIMG_")}
    return subprocess.run(
        [sys.executable, "-m", "chatimg_client", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class DroppingProxy:
    """A TCP proxy to the app that cuts every open connection once, as a flaky network would.

    Before forwarding each chunk from the server, it asks `cut_when(chunk)`; on the
    first yes, that chunk is swallowed (kept in `swallowed`) and every connection is
    aborted. It keeps accepting new connections afterwards.
    """

    def __init__(self, target_port: int, cut_when: Callable[[bytes], bool]) -> None:
        self.target_port = target_port
        self.cut_when = cut_when
        self.connections = 0
        self.received = 0  # bytes forwarded server → client
        self.sent_chunks = 0  # reads forwarded client → server
        self.swallowed = b""
        self.cut = False
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self._abort_all()

    def _abort_all(self) -> None:
        for writer in self.writers:
            writer.transport.abort()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [client_w, server_w]
        await asyncio.gather(
            self._pipe(client_r, server_w, downstream=False),
            self._pipe(server_r, client_w, downstream=True),
            return_exceptions=True,
        )
        client_w.transport.abort()
        server_w.transport.abort()

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, downstream: bool
    ) -> None:
        while data := await source.read(65536):
            if downstream and not self.cut and self.cut_when(data):
                self.cut, self.swallowed = True, data
                self._abort_all()
                return
            sink.write(data)
            await sink.drain()
            if downstream:
                self.received += len(data)
            else:
                self.sent_chunks += 1
        sink.transport.abort()  # one side ended: end the other too


# --- tests -----------------------------------------------------------------------------


async def test_it_streams_an_answer_and_a_drawn_image_to_the_terminal_and_saves_the_image_file(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    out, err = io.StringIO(), io.StringIO()
    images = tmp_path / "images"
    code = await run(
        "draw a lighthouse at dusk",
        url=app.url,
        token=tokens["laptop"],
        images_dir=images,
        out=out,
        err=err,
    )

    assert code == EXIT_OK, err.getvalue()
    answer = latest_answer(app, conversation_of(err.getvalue()))
    assert answer.startswith("Sure, let me draw a lighthouse at dusk.")
    assert "Here is your picture of a lighthouse at dusk." in answer  # after the tool
    assert out.getvalue() == answer + "\n"

    (saved,) = images.iterdir()
    content = saved.read_bytes()
    assert saved.suffix == ".png"
    assert content[:8] == PNG_MAGIC
    assert struct.unpack(">II", content[16:24]) == (256, 256)  # the IHDR width, height
    with sqlite3.connect(app.db_path) as db:
        (image_id,) = db.execute("SELECT id FROM conversations_generatedimage").fetchone()
    assert uuid.UUID(saved.stem) == uuid.UUID(image_id)
    assert "[generating image: a lighthouse at dusk…]" in err.getvalue()
    assert f"[image saved: {saved} (256x256)]" in err.getvalue()


async def test_it_resumes_after_the_connection_drops_mid_answer_and_prints_every_character_once(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    # Multi-byte and astral characters too: offsets count code points, not bytes.
    words = [f"wörd{i}{'🌊' if i % 7 == 0 else ''} " for i in range(60)]
    model.script_chat(Reply(tokens=words, token_delay=0.05))
    out, err = io.StringIO(), io.StringIO()
    printed_at_cut: list[int] = []

    def mid_answer(chunk: bytes) -> bool:
        # ~1.5 kB is the handshake, session.ready, message.accepted and a few deltas.
        if proxy.received < 1500:
            return False
        printed_at_cut.append(len(out.getvalue()))
        return True

    proxy = DroppingProxy(int(app.url.rsplit(":", 1)[1]), cut_when=mid_answer)
    url = await proxy.start()
    try:
        code = await run(
            "tell me a long story",
            url=url,
            token=tokens["laptop"],
            images_dir=tmp_path,
            out=out,
            err=err,
        )
    finally:
        await proxy.stop()

    assert code == EXIT_OK, err.getvalue()
    full = "".join(words)
    assert out.getvalue() == full + "\n"
    assert latest_answer(app, conversation_of(err.getvalue())) == full
    assert proxy.connections == 2, err.getvalue()
    assert 0 < printed_at_cut[0] < len(full)  # the cut really was mid-answer
    assert "reconnecting" in err.getvalue()


async def test_a_send_whose_acceptance_was_lost_is_sent_again_and_answered_once(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    out, err = io.StringIO(), io.StringIO()
    # The client's 1st write is the HTTP upgrade, its 2nd the message.send frame: cut
    # the connection instead of delivering the server's reply to that frame.
    proxy = DroppingProxy(int(app.url.rsplit(":", 1)[1]), cut_when=lambda _: proxy.sent_chunks >= 2)
    url = await proxy.start()
    try:
        code = await run(
            "hello there", url=url, token=tokens["laptop"], images_dir=tmp_path, out=out, err=err
        )
    finally:
        await proxy.stop()

    assert code == EXIT_OK, err.getvalue()
    assert b'"message.accepted"' in proxy.swallowed  # so the first send was stored
    assert proxy.connections == 2
    conversation = conversation_of(err.getvalue())
    assert out.getvalue() == latest_answer(app, conversation) + "\n"
    with sqlite3.connect(app.db_path) as db:
        roles = db.execute(
            "SELECT role FROM conversations_message WHERE conversation_id = ? ORDER BY id",
            (uuid.UUID(conversation).hex,),
        ).fetchall()
    assert roles == [("user",), ("assistant",)]  # one message, one answer
    assert len(model.chat_requests()) == 1


@pytest.mark.parametrize("which", ["revoked", "wrong"])
def test_a_revoked_or_wrong_token_is_refused_with_exit_code_3_and_a_clear_message(
    which: str, app: AppServer, tokens: dict[str, str], model: OfflineModelServer
) -> None:
    if which == "revoked":
        token = tokens["old"]
        app.manage(
            "shell",
            "-c",
            "from conversations.models import ApiToken\n"
            "for row in ApiToken.objects.filter(name='old'): row.revoke()",
        )
    else:
        token = "cit_" + "x" * 43

    result = client_command("--url", app.url, "--token", token, "hello")

    assert result.returncode == EXIT_UNAUTHENTICATED, result.stderr
    assert "The API token was not accepted (unknown or revoked)" in result.stderr
    assert "reconnecting" not in result.stderr
    assert result.stdout == ""
    assert model.chat_requests() == []


async def test_the_conversation_flag_continues_an_existing_conversation(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await run(
        "remember the word pelican",
        url=app.url,
        token=tokens["laptop"],
        images_dir=tmp_path,
        out=out,
        err=err,
    )
    assert code == EXIT_OK, err.getvalue()
    conversation = conversation_of(err.getvalue())
    first_answer = latest_answer(app, conversation)

    # As a command this time, with the prompt on stdin.
    result = await asyncio.to_thread(
        client_command,
        "--url",
        app.url,
        "--token",
        tokens["laptop"],
        "--conversation",
        conversation,
        "--images-dir",
        str(tmp_path),
        stdin="which word did I ask you to remember?\n",
    )

    assert result.returncode == EXIT_OK, result.stderr
    assert conversation_of(result.stderr) == conversation
    assert result.stdout == latest_answer(app, conversation) + "\n"
    messages = model.chat_requests()[-1].body["messages"]
    history = [(m["role"], m["content"]) for m in messages if m["role"] != "system"]
    assert history == [
        ("user", "remember the word pelican"),
        ("assistant", first_answer),
        ("user", "which word did I ask you to remember?"),
    ]


async def test_with_images_on_s3_it_follows_the_redirect_to_the_signed_url_and_saves_the_image(
    s3_app: AppServer, model: OfflineModelServer, tmp_path: Path
) -> None:
    token = (await asyncio.to_thread(issue_tokens, s3_app))["laptop"]
    out, err = io.StringIO(), io.StringIO()
    code = await run(
        "draw a fox in a snowy forest",
        url=s3_app.url,
        token=token,
        images_dir=tmp_path,
        out=out,
        err=err,
    )

    assert code == EXIT_OK, err.getvalue()
    (saved,) = tmp_path.iterdir()
    assert saved.suffix == ".png"
    assert saved.read_bytes()[:8] == PNG_MAGIC
    assert f"[image saved: {saved} (256x256)]" in err.getvalue()
    assert not any(s3_app.media_root.rglob("*.png"))  # it really came from the bucket
    assert f"GET /images/{saved.stem}/ 302" in s3_app.log_tail()  # the app redirected


async def test_an_answer_cut_at_its_length_limit_is_carried_on_with_continue(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    model.script_chat(
        Reply(tokens=["The ", "tide ", "came "], finish_reason="length"),
        Reply(tokens=["in ", "slowly."]),
    )
    out, err = io.StringIO(), io.StringIO()
    code = await run("tell me", url=app.url, token=tokens["laptop"], out=out, err=err)
    assert code == EXIT_OK, err.getvalue()
    assert out.getvalue() == "The tide came \n"
    assert "length limit; --continue" in err.getvalue()
    conversation = conversation_of(err.getvalue())

    result = await asyncio.to_thread(
        client_command,
        "--url",
        app.url,
        "--token",
        tokens["laptop"],
        "--conversation",
        conversation,
        "--continue",
        stdin="",
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == "in slowly.\n"  # only what is new
    assert latest_answer(app, conversation) == "The tide came in slowly."


async def test_attach_uploads_each_file_and_sends_it_with_the_message(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    from PIL import Image

    paths = []
    for n, color in enumerate(((250, 0, 0), (0, 0, 250))):
        path = tmp_path / f"photo{n}.png"
        Image.new("RGB", (40 + n, 30), color).save(path)
        paths.append(path)
    model.script_chat(Reply(tokens=["Two", " pictures."]))
    out, err = io.StringIO(), io.StringIO()

    code = await run(
        "what are these?", url=app.url, token=tokens["laptop"], attach=paths, out=out, err=err
    )

    assert code == EXIT_OK, err.getvalue()
    conversation = conversation_of(err.getvalue())
    with sqlite3.connect(app.db_path) as db:
        rows = db.execute(
            "SELECT a.id, a.width, m.text FROM conversations_attachment a "
            "JOIN conversations_message m ON m.id = a.message_id "
            "WHERE a.conversation_id = ? ORDER BY a.width",
            (uuid.UUID(conversation).hex,),
        ).fetchall()
    assert [(width, text) for _, width, text in rows] == [
        (40, "what are these?"),
        (41, "what are these?"),
    ]
    # The model was told of both, by id.
    said = model.chat_requests()[-1].body["messages"][-1]["content"]
    for attachment_id, _, _ in rows:
        assert f"[image attachment {uuid.UUID(attachment_id)}]" in said
    assert "[attached " in err.getvalue()


def test_attach_of_a_file_that_is_not_an_image_is_refused_before_sending(
    app: AppServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    result = client_command(
        "--url", app.url, "--token", tokens["laptop"], "--attach", str(fake), "hello"
    )
    assert result.returncode == 4, result.stderr  # EXIT_REFUSED
    assert "upload_not_image" in result.stderr
    with sqlite3.connect(app.db_path) as db:
        sent = db.execute("SELECT count(*) FROM conversations_message WHERE text = 'hello'")
        assert sent.fetchone()[0] == 0


async def test_make_it_stormy_edits_the_drawn_image_and_every_image_of_a_call_is_saved(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    """docs/client.md's example session, then several images in one call."""
    images = tmp_path / "images"
    err = io.StringIO()
    code = await run(
        "draw a lighthouse at dusk",
        url=app.url,
        token=tokens["laptop"],
        images_dir=images,
        out=io.StringIO(),
        err=err,
    )
    assert code == EXIT_OK, err.getvalue()
    conversation = conversation_of(err.getvalue())
    (first,) = images.iterdir()

    result = await asyncio.to_thread(
        client_command,
        "--url",
        app.url,
        "--token",
        tokens["laptop"],
        "--conversation",
        conversation,
        "--images-dir",
        str(images),
        stdin="make it stormy\n",
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "[editing image: make it stormy…]" in result.stderr
    assert "[preview 1 of image 1]" in result.stderr  # previews are progress, not files
    edited = [path for path in images.iterdir() if path != first]
    assert len(edited) == 1
    assert f"edited from {first.stem}]" in result.stderr
    assert result.stdout.startswith("Sure, let me change it: make it stormy.")
    assert "Here it is, edited" in result.stdout
    # The provider got the first image's bytes to edit.
    (request,) = model.edit_requests()
    assert request.files[0][3] == first.read_bytes()

    err = io.StringIO()
    code = await run(
        "draw three pictures of a fox",
        url=app.url,
        token=tokens["laptop"],
        images_dir=tmp_path / "foxes",
        out=io.StringIO(),
        err=err,
    )
    assert code == EXIT_OK, err.getvalue()
    saved = sorted((tmp_path / "foxes").iterdir())
    assert len(saved) == 3 and len({path.read_bytes() for path in saved}) == 3
    assert err.getvalue().count("[image saved:") == 3


async def test_it_edits_the_last_message_lists_the_versions_and_switches_back(
    app: AppServer, tokens: dict[str, str], model: OfflineModelServer, tmp_path: Path
) -> None:
    from chatimg_client.branches import run_branch

    model.script_chat(Reply(text="Pelicans fish."), Reply(text="Herons wade."))
    out, err = io.StringIO(), io.StringIO()
    code = await run(
        "tell me about pelicans", url=app.url, token=tokens["laptop"], out=out, err=err
    )
    assert code == EXIT_OK, err.getvalue()
    conversation = conversation_of(err.getvalue())

    # --edit-last: a new version of the last message, answered on its own branch.
    result = await asyncio.to_thread(
        client_command,
        *("--url", app.url, "--token", tokens["laptop"], "--conversation", conversation),
        *("--edit-last", "tell me about herons"),
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == "Herons wade.\n"
    sent = model.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in sent if m["role"] != "system"] == ["tell me about herons"]

    # --versions: the active branch, and the versions of the edited message.
    result = await asyncio.to_thread(
        client_command,
        *("--url", app.url, "--token", tokens["laptop"], "--conversation", conversation),
        "--versions",
    )
    assert result.returncode == EXIT_OK, result.stderr
    question, answer = result.stdout.splitlines()
    match = re.match(r"#(\d+) user +2/2 \(versions (\d+) (\d+)\)  tell me about herons$", question)
    assert match, result.stdout
    assert answer.endswith("Herons wade.") and "assistant" in answer
    original = int(match.group(2))

    # --switch: back to the first version, which the model then sees.
    out, err = io.StringIO(), io.StringIO()
    code = await run_branch(
        url=app.url,
        token=tokens["laptop"],
        conversation_id=conversation,
        switch_to=original,
        out=out,
        err=err,
    )
    assert code == EXIT_OK, err.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"#{original} user") and "1/2" in lines[0]
    assert lines[1].endswith("Pelicans fish.")
    model.script_chat(Reply(text="Yes."))
    code = await run(
        "do they dive?",
        url=app.url,
        token=tokens["laptop"],
        conversation_id=conversation,
        out=io.StringIO(),
        err=io.StringIO(),
    )
    assert code == EXIT_OK
    sent = model.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in sent if m["role"] != "system"] == [
        "tell me about pelicans",
        "Pelicans fish.",
        "do they dive?",
    ]

    # Someone else's message id: refused as not found, exit code 4.
    result = await asyncio.to_thread(
        client_command,
        *("--url", app.url, "--token", tokens["laptop"], "--conversation", conversation),
        *("--switch", "999999"),
    )
    assert result.returncode == 4 and "not_found" in result.stderr
