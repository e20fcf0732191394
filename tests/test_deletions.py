"""An S3 outage during a delete never loses track of an object.

A real S3 server (moto, over HTTP) is stopped in the middle of a deletion; rows
go, the objects they owned stay owed (PendingDeletion), cleanup_images reports
them, and once S3 is back the retries delete them.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db.models.signals import post_delete
from django.test import Client
from django.utils import timezone
from moto.server import ThreadedMotoServer

from conversations.models import (
    Conversation,
    GeneratedImage,
    Message,
    PendingDeletion,
    ToolInvocation,
)
from tests.conftest import S3_KEYS, open_socket
from tests.servers import free_port
from tests.waiting import eventually


class S3:
    """A moto S3 server that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadedMotoServer | None = None
        self.bucket = f"chatimg-{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=S3_KEYS["access_key"],
            aws_secret_access_key=S3_KEYS["secret_key"],
        )

    def keys(self) -> list[str]:
        listing = self.client().list_objects_v2(Bucket=self.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def s3(settings: Any) -> Iterator[S3]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = S3()
    server.start()
    server.client().create_bucket(Bucket=server.bucket)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": server.bucket,
                "endpoint_url": server.url,
                "region_name": "us-east-1",
                "addressing_style": "path",
                "signature_version": "s3v4",
                "querystring_auth": True,
                "default_acl": None,
                "file_overwrite": False,
                # A stopped server is refused at once; no need to wait for botocore's retries.
                "client_config": Config(connect_timeout=2, retries={"total_max_attempts": 1}),
                **S3_KEYS,
            },
        },
    }
    yield server
    server.stop()


def image_in(conversation: Conversation, n: int) -> GeneratedImage:
    question = conversation.messages.create(role=Message.Role.USER, text=f"draw {n}")
    answer = conversation.messages.create(
        role=Message.Role.ASSISTANT, text="here", reply_to=question
    )
    invocation = ToolInvocation.objects.create(message=answer, call_id=f"c{n}", name="x")
    key = default_storage.save(f"images/t/{uuid.uuid4().hex}.png", ContentFile(b"png %d" % n))
    return GeneratedImage.objects.create(
        user=conversation.user,
        conversation=conversation,
        tool_invocation=invocation,
        file=key,
        sha256=f"{n}",
        bytes=5,
        width=1,
        height=1,
        model="m",
        prompt=f"p{n}",
    )


def cleanup(*args: str) -> str:
    out = io.StringIO()
    call_command("cleanup_images", *args, stdout=out)
    return out.getvalue()


def make_due() -> None:
    PendingDeletion.objects.update(next_attempt_at=timezone.now())


@pytest.mark.django_db(transaction=True)
def test_s3_stopping_mid_delete_leaves_the_rest_owed_until_it_is_back(
    s3: S3, make_user: Any
) -> None:
    user = make_user()
    conversation = Conversation.objects.create(user=user)
    images = [image_in(conversation, n) for n in range(3)]
    keys = sorted(image.file.name for image in images)
    assert s3.keys() == keys

    # S3 goes down just after the first object's deletion went through.
    def outage(sender: Any, **kwargs: Any) -> None:
        s3.stop()

    post_delete.connect(outage, sender=PendingDeletion, weak=False)
    try:
        client = Client()
        client.force_login(user)
        response = client.post(f"/c/{conversation.pk}/delete/")
    finally:
        post_delete.disconnect(outage, sender=PendingDeletion)
    assert response.status_code == 302
    assert not GeneratedImage.objects.exists() and not Conversation.objects.exists()
    owed = sorted(PendingDeletion.objects.values_list("key", flat=True))
    assert len(owed) == 2 and set(owed) < set(keys)
    assert all(record.attempts == 1 for record in PendingDeletion.objects.all())

    out = io.StringIO()
    with pytest.raises(CommandError, match="2 pending deletion"):
        call_command("cleanup_images", stdout=out)
    assert all(f"Pending deletion of {key}" in out.getvalue() for key in owed)

    s3.start()
    assert s3.keys() == owed  # the objects are still there: nothing forgot them
    report = cleanup()
    assert all(f"Pending deletion of {key} (1 failed" in report for key in owed)
    assert "0 object(s) without a row" in report and "2 pending deletion(s)" in report
    make_due()
    assert "0 pending deletion(s)." in cleanup("--apply")
    assert s3.keys() == [] and not PendingDeletion.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_deleting_a_message_or_a_user_while_s3_is_down_records_every_object(
    s3: S3, make_user: Any
) -> None:
    user = make_user()
    conversation = Conversation.objects.create(user=user)
    first = image_in(conversation, 1)
    second_user = make_user("bob")
    other = image_in(Conversation.objects.create(user=second_user), 2)
    s3.stop()
    # Deleting the answer (a message: the admin can) deletes its image.
    # (Regenerate keeps the old answer as a version now: tests/test_branches.py.)
    first.tool_invocation.message.delete()
    # Deleting an account deletes everything it had.
    get_user_model().objects.filter(pk=second_user.pk).delete()
    owed = sorted(PendingDeletion.objects.values_list("key", flat=True))
    assert owed == sorted([first.file.name, other.file.name])
    # Not due yet: the retry backs off.
    assert PendingDeletion.objects.retry_due() == 0
    assert PendingDeletion.objects.get(key=first.file.name).attempts == 1
    s3.start()
    make_due()
    assert PendingDeletion.objects.retry_due() == 0
    assert s3.keys() == [] and not PendingDeletion.objects.exists()


@pytest.mark.django_db(transaction=True)
async def test_a_process_with_sockets_retries_owed_deletions_by_itself(
    s3: S3, make_user: Any, settings: Any
) -> None:
    settings.DELETION_RETRY_SECONDS = 0.2
    user = await database_sync_to_async(make_user)()
    conversation = await Conversation.objects.acreate(user=user)
    image = await database_sync_to_async(image_in)(conversation, 1)
    s3.stop()
    await database_sync_to_async(conversation.delete)()
    assert await PendingDeletion.objects.acount() == 1
    s3.start()
    await PendingDeletion.objects.aupdate(next_attempt_at=timezone.now() - timedelta(seconds=1))
    connected, socket = await open_socket(user)  # a server process at work
    assert connected

    async def settled() -> bool:
        return not await PendingDeletion.objects.aexists()

    await eventually(settled, timeout=10, what="the owed deletion's retry")
    assert image.file.name not in set(s3.keys())
    await socket.close()
