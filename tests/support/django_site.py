"""A small Django site for tests/test_middleware.py: its URLconf is this module."""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

__all__ = ["wsgi_app"]


def _item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"item": item_id})


def _fail(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the site's own bug")


urlpatterns = [
    path("django/items/<int:item_id>", _item),
    path("django/fail", _fail),
]


def wsgi_app(tracker: Any) -> WSGIHandler:
    """The site's WSGI app with ``metronome.middleware.DjangoMiddleware`` first, tracking
    into ``tracker`` (Django's settings are configured once per process)."""
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=__name__,
            MIDDLEWARE=["metronome.middleware.DjangoMiddleware"],
            INSTALLED_APPS=[],
            SECRET_KEY="a test site's key, not a secret",
            USE_TZ=True,
            METRONOME_API_CALLS=None,
        )
        django.setup()
    settings.METRONOME_API_CALLS = tracker
    return get_wsgi_application()
