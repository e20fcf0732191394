"""chatimg settings: everything comes from the environment.

The defaults run on a laptop with no services at all (SQLite, the in-memory
channel layer, local file storage, the built-in offline model). Production
switches each piece on by setting its variable; docs/configuration.md lists
every one of them.
"""

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
import django
from django.core.exceptions import ImproperlyConfigured

from chatimg.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_model_counts,
    env_prices,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105
# Old keys still accepted when checking (not making) signatures: rotating the
# key then keeps sessions and share links working (docs/security.md).
SECRET_KEY_FALLBACKS = env_list("DJANGO_SECRET_KEY_FALLBACKS", [])

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "conversations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatimg.urls"
ASGI_APPLICATION = "chatimg.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "conversations.context_processors.model_banner",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    try:
        DATABASES = {
            # No health check: channels marks every trip to a database thread as
            # a new request, so a check was a SELECT 1 before every turn start's
            # queries (bench/). A connection that broke is dropped after its
            # error (close_if_unusable_or_obsolete) and the next trip reconnects.
            "default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)
        }
    except (ValueError, dj_database_url.ParseError, dj_database_url.UnknownSchemeError) as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from None
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": {
                # WAL lets the page read while a turn checkpoints; IMMEDIATE
                # takes the write lock up front instead of failing mid-way.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            # Keep the connection: all ORM work runs on one thread, and reopening
            # (and re-running the PRAGMAs) per call costs more than the query.
            "CONN_MAX_AGE": None,
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels and cache ---------------------------------------------------------

REDIS_URL = env_str("REDIS_URL")
# One prefix for every key this deployment puts in Redis (channel layer and
# cache), so that two deployments can share one Redis without sharing counters.
REDIS_PREFIX = env_str("CHATIMG_REDIS_PREFIX", env_str("CHATIMG_CHANNEL_PREFIX", "chatimg"))
if REDIS_URL:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"REDIS_URL must be a redis:// URL, got {REDIS_URL!r}")
    from chatimg import reconnect  # redis-py is only needed with Redis

    CHANNEL_LAYERS = {
        "default": {
            # The pub/sub layer: a group_send is one PUBLISH that each process
            # receives once. The core layer drains one sorted set per process
            # through a single locked BZPOPMIN loop and silently drops over
            # capacity: in bench/ it lost text from 30 streams on. Ours
            # publishes without channels-redis' per-shard lock (chatimg/layers.py).
            "BACKEND": "chatimg.layers.RedisPubSubChannelLayer",
            "CONFIG": {
                # No read timeout: redis-py's default (5 s) kills idle receives.
                "hosts": [
                    {"address": REDIS_URL, "socket_timeout": None, "retry": reconnect.async_retry()}
                ],
                "prefix": REDIS_PREFIX,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX,
        }
    }
    # Sessions read from Redis, written to both (the database stays the record):
    # one query fewer for every page and socket (issue 12). Logout, expiry and
    # password changes behave as with "db"; see docs/security.md. Not without
    # Redis: the in-process cache would not see another process's logout.
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chatimg.layers.FastInMemoryChannelLayer",
            "CONFIG": {"capacity": env_int("CHATIMG_CHANNEL_CAPACITY", 1000, minimum=10)},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Storage --------------------------------------------------------------------

MEDIA_ROOT = env_str("MEDIA_ROOT", str(BASE_DIR / "media"))
MEDIA_URL = "/media/"  # never served directly: images go through the app's image view
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

S3_BUCKET = env_str("S3_BUCKET")
S3_PRESIGN_SECONDS = env_int("S3_PRESIGN_SECONDS", 300, minimum=10)
S3_CUSTOM_DOMAIN = env_str("S3_CUSTOM_DOMAIN")
# The bucket is private, so a URL on a custom domain must be signed too:
# django-storages signs only for CloudFront (a key pair of its key group),
# and would otherwise hand out unsigned URLs that a private bucket refuses.
S3_CLOUDFRONT_KEY_ID = env_str("S3_CLOUDFRONT_KEY_ID")
S3_CLOUDFRONT_KEY = env_str("S3_CLOUDFRONT_KEY")
if env_str("S3_CLOUDFRONT_KEY_FILE"):
    try:
        S3_CLOUDFRONT_KEY = Path(env_str("S3_CLOUDFRONT_KEY_FILE")).read_text()
    except OSError as exc:
        raise ImproperlyConfigured(f"S3_CLOUDFRONT_KEY_FILE cannot be read: {exc}") from None
if "\\n" in S3_CLOUDFRONT_KEY and "\n" not in S3_CLOUDFRONT_KEY:
    S3_CLOUDFRONT_KEY = S3_CLOUDFRONT_KEY.replace("\\n", "\n")  # a PEM from a .env line
if S3_BUCKET and S3_CUSTOM_DOMAIN:
    if not (S3_CLOUDFRONT_KEY_ID and S3_CLOUDFRONT_KEY):
        raise ImproperlyConfigured(
            "S3_CUSTOM_DOMAIN serves the private bucket only through signed CloudFront URLs: "
            "set S3_CLOUDFRONT_KEY_ID and S3_CLOUDFRONT_KEY (or S3_CLOUDFRONT_KEY_FILE), "
            "or unset S3_CUSTOM_DOMAIN to redirect to presigned URLs of the S3 endpoint"
        )
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:  # a bad key fails here, not at the first image a user opens
        load_pem_private_key(S3_CLOUDFRONT_KEY.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"S3_CLOUDFRONT_KEY is not an unencrypted PEM private key: {exc}"
        ) from None
if S3_BUCKET:
    _default_storage: dict[str, Any] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": env_str("S3_ENDPOINT_URL") or None,
            "access_key": env_str("S3_ACCESS_KEY_ID") or None,
            "secret_key": env_str("S3_SECRET_ACCESS_KEY") or None,
            "region_name": env_str("S3_REGION") or None,
            "addressing_style": env_choice(
                "S3_ADDRESSING_STYLE", "path", {"path", "virtual", "auto"}
            ),
            "signature_version": "s3v4",
            "custom_domain": S3_CUSTOM_DOMAIN or None,
            "cloudfront_key_id": S3_CLOUDFRONT_KEY_ID or None,
            "cloudfront_key": S3_CLOUDFRONT_KEY or None,
            "querystring_auth": True,
            "querystring_expire": S3_PRESIGN_SECONDS,
            "default_acl": None,
            "file_overwrite": False,
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": MEDIA_ROOT, "base_url": MEDIA_URL},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Auth -----------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat"
LOGOUT_REDIRECT_URL = "login"
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Models ---------------------------------------------------------------------

OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL") or None
# Images may come from another provider than chat (e.g. chat on vLLM, images on OpenAI).
OPENAI_IMAGE_BASE_URL = env_str("OPENAI_IMAGE_BASE_URL") or OPENAI_BASE_URL
OPENAI_IMAGE_API_KEY = env_str("OPENAI_IMAGE_API_KEY") or OPENAI_API_KEY
# Azure OpenAI's dated api-version endpoints: OPENAI_BASE_URL is then the
# resource's endpoint (https://NAME.openai.azure.com) and the model names are
# deployment names. Its v1 endpoint (…/openai/v1/) needs none of this.
AZURE_OPENAI_API_VERSION = env_str("AZURE_OPENAI_API_VERSION")
OFFLINE_MODEL = not OPENAI_API_KEY
CHAT_MODEL = env_str("CHATIMG_CHAT_MODEL", "offline-chat" if OFFLINE_MODEL else "gpt-4.1-mini")
IMAGE_MODEL = env_str("CHATIMG_IMAGE_MODEL", "offline-image" if OFFLINE_MODEL else "gpt-image-1")
IMAGE_SIZE = env_str("CHATIMG_IMAGE_SIZE", "1024x1024")
# "auto" sends response_format=b64_json to dall-e models only (they answer with a
# URL otherwise); gpt-image models and gateways such as LiteLLM refuse it, and
# either answer is read. "none" means: never send it.
IMAGE_RESPONSE_FORMAT = env_choice(
    "CHATIMG_IMAGE_RESPONSE_FORMAT", "auto", {"auto", "b64_json", "url", "none"}
)
# Allow-lists for the tool's options; empty = the built-in table for the model.
IMAGE_SIZES = env_list("CHATIMG_IMAGE_SIZES", [])
IMAGE_QUALITIES = env_list("CHATIMG_IMAGE_QUALITIES", [])
IMAGE_STYLES = env_list("CHATIMG_IMAGE_STYLES", [])
# "quality=price" pairs in USD per image, "*" for any quality, e.g.
# "low=0.011,medium=0.042,high=0.167" or "*=0.04". Unset: no cost estimate.
IMAGE_PRICES = env_prices("CHATIMG_IMAGE_PRICES")
IMAGES_PER_DAY = env_int("CHATIMG_IMAGES_PER_DAY", 50, minimum=0)
# Images per tool call (`n`), by image model name prefix: "4", or
# "gpt-image=4,dall-e-3=1"; unset = the built-in table (docs/images.md).
IMAGE_MAX_N = env_model_counts("CHATIMG_IMAGE_MAX_N", maximum=10)
# Live previews: partial images to ask for while one is drawn (0 = off, at most
# 3, OpenAI's limit), by model name prefix like CHATIMG_IMAGE_MAX_N.
IMAGE_PREVIEWS = env_model_counts("CHATIMG_IMAGE_PREVIEWS", maximum=3)
# The longest side of a preview sent in a tool.preview frame, in pixels.
IMAGE_PREVIEW_PX = env_int("CHATIMG_IMAGE_PREVIEW_PX", 256, minimum=32)
IMAGE_MAX_BYTES = env_int("CHATIMG_IMAGE_MAX_BYTES", 20 * 1024 * 1024, minimum=1024)
# Images people attach to their messages (conversations/attachments.py, docs/images.md).
UPLOAD_MAX_BYTES = env_int("CHATIMG_UPLOAD_MAX_BYTES", 10 * 1024 * 1024, minimum=1024)
# Width x height after decoding; also Pillow's decompression-bomb limit for uploads.
UPLOAD_MAX_PIXELS = env_int("CHATIMG_UPLOAD_MAX_PIXELS", 4096 * 4096, minimum=64 * 64)
UPLOADS_PER_MESSAGE = env_int("CHATIMG_UPLOADS_PER_MESSAGE", 4, minimum=0)
# Uploads never sent with a message are deleted after this long.
UPLOAD_UNATTACHED_SECONDS = env_int("CHATIMG_UPLOAD_UNATTACHED_SECONDS", 86400, minimum=60)
# The chat model reads images: attachments go to it as image parts (data URLs
# built per request). Off: it is told "[image attachment <id>]" instead.
VISION = env_bool("CHATIMG_VISION", False)
LLM_TIMEOUT_SECONDS = env_float("CHATIMG_LLM_TIMEOUT", 60.0, minimum=1)
IMAGE_TIMEOUT_SECONDS = env_float("CHATIMG_IMAGE_TIMEOUT", 120.0, minimum=1)
LLM_MAX_RETRIES = env_int("CHATIMG_LLM_MAX_RETRIES", 2, minimum=0)
# A cap on each answer's length in tokens; 0 sends none (the provider's default).
MAX_OUTPUT_TOKENS = env_int("CHATIMG_MAX_OUTPUT_TOKENS", 0, minimum=0)
# OpenAI's reasoning models (o1, o3, o4, gpt-5) refuse max_tokens and want
# max_completion_tokens; "auto" picks by the chat model's name.
MAX_TOKENS_PARAM = env_choice(
    "CHATIMG_MAX_TOKENS_PARAM", "auto", {"auto", "max_tokens", "max_completion_tokens"}
)
SYSTEM_PROMPT = env_str(
    "CHATIMG_SYSTEM_PROMPT",
    "You are a helpful assistant in a chat app that can draw. When the user asks for a "
    "picture, call the generate_image tool with a detailed prompt, then say one short "
    "sentence about the result. Use Markdown for formatting.",
)
# Ask the model for a title after the first exchange (the first message stands in
# until then, and for good with the offline model).
LLM_TITLES = env_bool("CHATIMG_LLM_TITLES", not OFFLINE_MODEL)
OFFLINE_TOKEN_DELAY_MS = env_int("CHATIMG_OFFLINE_TOKEN_DELAY_MS", 25, minimum=0)

# --- Turn engine ----------------------------------------------------------------

# Without Redis, where answers in flight are kept outside the process (one
# append-only file each, conversations/streams.py), so that a crash loses at
# most one coalescing window of text.
STREAM_DIR = env_str("CHATIMG_STREAM_DIR", str(BASE_DIR / "answer-streams"))
STREAM_COALESCE_MS = env_int("CHATIMG_STREAM_COALESCE_MS", 30, minimum=0)
CHECKPOINT_SECONDS = env_float("CHATIMG_CHECKPOINT_SECONDS", 15.0, minimum=0.05)
STALE_TURN_SECONDS = env_float("CHATIMG_STALE_TURN_SECONDS", 60.0, minimum=0.2)
if STALE_TURN_SECONDS <= 2 * CHECKPOINT_SECONDS:
    raise ImproperlyConfigured(
        "CHATIMG_STALE_TURN_SECONDS must be more than twice CHATIMG_CHECKPOINT_SECONDS, "
        "or live answers would be taken for dead ones"
    )
# On SIGTERM, how long running answers (and their images) may take to finish
# before what is left is interrupted; keep the process manager's own grace
# period longer (docs/deployment.md).
DRAIN_SECONDS = env_float("CHATIMG_DRAIN_SECONDS", 25.0, minimum=0)
TURN_TIMEOUT_SECONDS = env_float("CHATIMG_TURN_TIMEOUT", 300.0, minimum=1)
MAX_TOOL_CALLS_PER_TURN = env_int("CHATIMG_MAX_TOOL_CALLS", 4, minimum=0)
# Model requests per answer, whatever the server does (a server that returns
# tool calls although none were offered once made 780 in one answer).
MAX_MODEL_ROUNDS = env_int("CHATIMG_MAX_MODEL_ROUNDS", MAX_TOOL_CALLS_PER_TURN + 2, minimum=1)
MAX_MESSAGE_CHARS = env_int("CHATIMG_MAX_MESSAGE_CHARS", 8000, minimum=1)
# Threads (each with its own database connection) for the database work of turn
# starts and ends (conversations/dbpool.py).
DB_THREADS = env_int("CHATIMG_DB_THREADS", 4, minimum=1)
MAX_FRAME_BYTES = env_int("CHATIMG_MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
HISTORY_MESSAGES = env_int("CHATIMG_HISTORY_MESSAGES", 40, minimum=2)
MESSAGES_PER_MINUTE = env_int("CHATIMG_MESSAGES_PER_MINUTE", 20, minimum=1)
FRAMES_PER_10_SECONDS = env_int("CHATIMG_FRAMES_PER_10S", 200, minimum=10)

# --- Security (docs/security.md) ---------------------------------------------------

# Origins (scheme://host[:port]) whose pages may open the chat socket with the
# session cookie. Empty: only the socket's own origin (its scheme and Host).
WEBSOCKET_ALLOWED_ORIGINS = env_list("CHATIMG_WS_ALLOWED_ORIGINS", CSRF_TRUSTED_ORIGINS)
# How often an open socket re-reads its session or token (revocations also
# close sockets at once through the channel layer; this catches expiry).
ACCESS_RECHECK_SECONDS = env_float("CHATIMG_ACCESS_RECHECK_SECONDS", 60.0, minimum=0.5)

# Provider image URLs are fetched from public addresses only; these networks
# (comma-separated CIDRs or addresses, e.g. "127.0.0.1" for a LocalAI on this
# host) are fetched from as well.
IMAGE_FETCH_ALLOWED_NETWORKS = []
for _network in env_list("CHATIMG_IMAGE_FETCH_ALLOW", []):
    try:
        IMAGE_FETCH_ALLOWED_NETWORKS.append(ipaddress.ip_network(_network, strict=False))
    except ValueError:
        raise ImproperlyConfigured(
            f"CHATIMG_IMAGE_FETCH_ALLOW must list networks like 127.0.0.1/32, got {_network!r}"
        ) from None
# One deadline for a whole download (lookup, connect, headers and body).
IMAGE_FETCH_TIMEOUT_SECONDS = env_float("CHATIMG_IMAGE_FETCH_TIMEOUT", 30.0, minimum=1)

# Image objects whose deletion storage refused are retried this often.
DELETION_RETRY_SECONDS = env_float("CHATIMG_DELETION_RETRY_SECONDS", 60.0, minimum=0.1)

# Content-Security-Policy on every response: no inline script runs, scripts
# and styles come from this origin, images also from the image storage (the
# image view redirects there). Django 6 has it built in; on 5.2 django-csp.
_CSP_IMAGE_SOURCES = ["'self'", "data:", "blob:"]
if S3_BUCKET:
    _S3 = _default_storage["OPTIONS"]
    if _S3["custom_domain"]:
        _CSP_IMAGE_SOURCES.append(f"https://{_S3['custom_domain']}")
    elif _S3["endpoint_url"]:
        _CSP_IMAGE_SOURCES.append(_S3["endpoint_url"].rstrip("/"))
    else:
        _CSP_IMAGE_SOURCES.append("https://*.amazonaws.com")
_CSP_IMAGE_SOURCES += env_list("CHATIMG_CSP_IMG_SRC", [])
CSP_DIRECTIVES = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    # Style attributes stay allowed (the admin's transcript uses them); they run no code.
    "style-src": ["'self'", "'unsafe-inline'"],
    "img-src": _CSP_IMAGE_SOURCES,
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}
if django.VERSION >= (6, 0):
    SECURE_CSP = CSP_DIRECTIVES
    MIDDLEWARE.insert(1, "django.middleware.csp.ContentSecurityPolicyMiddleware")
else:
    CONTENT_SECURITY_POLICY = {"DIRECTIVES": CSP_DIRECTIVES}
    MIDDLEWARE.insert(1, "csp.middleware.CSPMiddleware")

# Login throttling (django-axes): after CHATIMG_LOGIN_FAILURE_LIMIT wrong
# passwords for one username from one address, that pair is locked out for
# CHATIMG_LOGIN_COOLOFF_MINUTES (HTTP 429); a success resets the count.
INSTALLED_APPS.append("axes")
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # last, as axes requires
AXES_FAILURE_LIMIT = env_int("CHATIMG_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("CHATIMG_LOGIN_COOLOFF_MINUTES", 15, minimum=0.1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False  # no banner in every manage.py command
# Behind N reverse proxies the client's address is N hops back in X-Forwarded-For.
AXES_IPWARE_PROXY_COUNT = env_int("CHATIMG_PROXY_COUNT", 0, minimum=0) or None
if AXES_IPWARE_PROXY_COUNT:
    AXES_IPWARE_META_PRECEDENCE_ORDER = ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # Request logs from the offline model's own HTTP server are noise.
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # daphne's runserver logs each request here; one line each, not two.
        "django.channels.server": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # Django's default config gives these their own console handler, and they
        # propagate to ours too: every warning and autoreloader line came out twice.
        # Without their own handler they print once, through the root's.
        "django": {"handlers": [], "level": env_str("LOG_LEVEL", "INFO"), "propagate": True},
        "py.warnings": {"handlers": [], "propagate": True},
    },
}
