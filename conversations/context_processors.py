"""What every page template knows: whether the built-in offline model is in use."""

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def model_banner(request: HttpRequest) -> dict[str, Any]:
    """Tell every page whether the built-in offline model is answering."""
    return {"offline_model": settings.OFFLINE_MODEL, "chat_model": settings.CHAT_MODEL}
