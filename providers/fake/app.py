"""The one aiohttp application serving the three fake providers under /openai, /anthropic and /gemini."""

from __future__ import annotations

from aiohttp import web

from . import anthropic, gemini, openai
from .wire import CLIENT_MAX_SIZE, swallow_dropped


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "providers": ["openai", "anthropic", "gemini"]})


def build_app() -> web.Application:
    """Build the app; OpenAI under /openai, Anthropic under /anthropic, Gemini under /gemini."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[swallow_dropped])
    app.router.add_get("/health", health)
    for prefix, module in (("/openai", openai), ("/anthropic", anthropic), ("/gemini", gemini)):
        app.add_subapp(prefix, module.build_app())
    return app
