"""Settings come from the environment and a malformed value stops the process."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.servers import REPO

CHECK = "import django; django.setup(); from django.conf import settings; print(settings.{})"


def load(setting: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHECK.format(setting)],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "chatimg.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "mysqlx://nope"}, "DATABASE_URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL"),
        ({"CHATIMG_STREAM_COALESCE_MS": "fast"}, "CHATIMG_STREAM_COALESCE_MS"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"S3_BUCKET": "b", "S3_ADDRESSING_STYLE": "sideways"}, "S3_ADDRESSING_STYLE"),
        ({"CHATIMG_IMAGE_PRICES": "hd=cheap"}, "CHATIMG_IMAGE_PRICES"),
        ({"CHATIMG_CHECKPOINT_SECONDS": "40"}, "CHATIMG_STALE_TURN_SECONDS"),
        ({"DJANGO_DEBUG": "0"}, "DJANGO_SECRET_KEY"),
    ],
)
def test_a_malformed_setting_stops_start_up_naming_the_variable(
    env: dict[str, str], named: str
) -> None:
    result = load("DEBUG", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and named in result.stderr


def test_the_laptop_defaults_need_no_services() -> None:
    result = load(
        "DATABASES['default']['ENGINE'], settings.CHANNEL_LAYERS['default']['BACKEND']"
        ", settings.STORAGES['default']['BACKEND'], settings.OFFLINE_MODEL"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.db.backends.sqlite3",
        "chatimg.layers.FastInMemoryChannelLayer",
        "django.core.files.storage.FileSystemStorage",
        "True",
    ]


def test_production_services_are_switched_on_by_their_variables() -> None:
    result = load(
        "DATABASES['default']['ENGINE'], settings.CHANNEL_LAYERS['default']['BACKEND'], "
        "settings.STORAGES['default']['BACKEND'], settings.OFFLINE_MODEL",
        DATABASE_URL="postgres://u:p@db:5432/chatimg",
        REDIS_URL="redis://cache:6379/0",
        S3_BUCKET="images",
        OPENAI_API_KEY="sk-x",
    )
    assert result.returncode == 0, result.stderr
    assert "django.db.backends.postgresql" in result.stdout
    assert "chatimg.layers.RedisPubSubChannelLayer" in result.stdout
    assert "storages.backends.s3.S3Storage" in result.stdout
    assert result.stdout.strip().endswith("False")


def test_two_deployments_sharing_a_redis_keep_their_keys_apart() -> None:
    # Rate-limit counters live in the cache: with one fixed prefix, two
    # deployments on one Redis would count each other's messages.
    result = load(
        "CACHES['default']['KEY_PREFIX'], settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']",
        REDIS_URL="redis://cache:6379/0",
        CHATIMG_REDIS_PREFIX="staging",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["staging", "staging"]


def test_a_custom_domain_without_cloudfront_keys_stops_start_up_naming_them() -> None:
    # With a private bucket, django-storages would build unsigned custom-domain URLs,
    # which the bucket refuses (403): start-up refuses the configuration instead.
    result = load("DEBUG", S3_BUCKET="images", S3_CUSTOM_DOMAIN="images.example.com")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    for name in ("S3_CUSTOM_DOMAIN", "S3_CLOUDFRONT_KEY_ID", "S3_CLOUDFRONT_KEY"):
        assert name in result.stderr


def test_a_cloudfront_key_that_is_not_a_pem_private_key_stops_start_up() -> None:
    result = load(
        "DEBUG",
        S3_BUCKET="images",
        S3_CUSTOM_DOMAIN="images.example.com",
        S3_CLOUDFRONT_KEY_ID="K2JCJMDEHXQW5F",
        S3_CLOUDFRONT_KEY="not a key",
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "S3_CLOUDFRONT_KEY" in result.stderr


def test_a_custom_domain_gets_signed_cloudfront_urls_that_expire(tmp_path: Any) -> None:
    import base64
    import json
    import time
    import urllib.parse

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    key_file = tmp_path / "cloudfront.pem"
    key_file.write_bytes(pem)
    code = (
        "import django; django.setup(); "
        "from django.core.files.storage import default_storage; "
        "print(default_storage.url('images/ab/cd.png'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "chatimg.settings",
            "S3_BUCKET": "images",
            "S3_CUSTOM_DOMAIN": "images.example.com",
            "S3_CLOUDFRONT_KEY_ID": "K2JCJMDEHXQW5F",
            "S3_CLOUDFRONT_KEY_FILE": str(key_file),
            "S3_PRESIGN_SECONDS": "120",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip().splitlines()[-1]
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "images.example.com",
        "/images/ab/cd.png",
    )
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query["Key-Pair-Id"] == "K2JCJMDEHXQW5F"
    expires = int(query["Expires"])
    assert 100 <= expires - time.time() <= 125  # S3_PRESIGN_SECONDS, not forever
    # CloudFront's canned policy, signed with the private key: verify with the public one.
    resource = url.split("?", 1)[0]
    policy = json.dumps(
        {
            "Statement": [
                {"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}
            ]
        },
        separators=(",", ":"),
    )
    signature = base64.b64decode(
        query["Signature"].replace("-", "+").replace("_", "=").replace("~", "/")
    )
    key.public_key().verify(signature, policy.encode(), padding.PKCS1v15(), hashes.SHA1())


def test_each_warning_and_log_line_is_printed_once_in_development() -> None:
    # What `make run` showed twice: Python warnings and Django's own log lines
    # (the autoreloader's "Watching for file changes"), in DEBUG.
    code = (
        "import django, logging, warnings; django.setup();"
        "warnings.warn('a warning to see once');"
        "logging.getLogger('django.utils.autoreload').info('a django line to see once');"
        "logging.getLogger('conversations').warning('an app line to see once')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "chatimg.settings",
            "DJANGO_DEBUG": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line in ("a warning to see once", "a django line to see once", "an app line to see once"):
        assert result.stderr.count(line) == 1, result.stderr
