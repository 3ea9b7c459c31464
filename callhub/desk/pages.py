"""The desk's own routes: the page shell, its static files and the token check.

The page is one HTML shell with the text of the chosen language and the
desk settings embedded as JSON; the script then talks to the JSON API with
the signed-in token. Nothing here returns call data, so only the session
check looks at tokens. Responses carry a strict Content-Security-Policy:
only this server's own script, style and API.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

from aiohttp import web

from callhub import __version__
from callhub.api.auth import role_of
from callhub.api.base import SETTINGS, json_response
from callhub.api.params import MAX_NOTE, MAX_WHO
from callhub.config import Settings
from callhub.desk.i18n import CATALOGUES, pick_language

STATIC = resources.files("callhub.desk") / "static"
PAGE = (resources.files("callhub.desk") / "templates" / "page.html").read_text("utf-8")
LANG_COOKIE = "callhub_lang"
WITHIN_RINGS = 3  # DESIGN.md: "answered within three rings" is the desk's headline figure

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


LIST_LIMIT = 500
"""Rows the worklist view draws of pending entries and of due follow-ups (the oldest
first); past it the count says how many are shown, not a total it does not know."""


def boot_data(settings: Settings, lang: str) -> dict[str, Any]:
    """What the script needs besides the API: text, time zone, targets, categories."""
    return {
        "lang": lang,
        "strings": dict(CATALOGUES[lang]),
        "timezone": settings.timezone,
        "poll_seconds": settings.desk_poll_seconds,
        "list_limit": LIST_LIMIT,
        "note_limit": MAX_NOTE,  # the API's limits, so that a box never takes more
        "who_limit": MAX_WHO,
        "targets": dict(settings.desk_targets),
        "categories": list(settings.categories),
        "rings": WITHIN_RINGS,
        "version": __version__,
    }


def render_page(settings: Settings, lang: str) -> str:
    strings = CATALOGUES[lang]
    # JSON inside <script>: no '<' at all, so no '</script>' or '<!--' can appear.
    boot = json.dumps(boot_data(settings, lang), ensure_ascii=False).replace("<", "\\u003c")
    values = {
        "html_lang": "zh-CN" if lang == "zh" else "en",
        "title": strings["title"],
        "nav_worklist": strings["nav.worklist"],
        "nav_calls": strings["nav.calls"],
        "nav_today": strings["nav.today"],
        "nav_sms": strings["nav.sms"],
        "language": strings["language"],
        "sign_out": strings["signout"],
        "noscript": strings["noscript"],
        "version": __version__,
    }
    page = PAGE
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value))
    page = page.replace("{{zh_current}}", ' aria-current="true"' if lang == "zh" else "")
    page = page.replace("{{en_current}}", ' aria-current="true"' if lang == "en" else "")
    return page.replace("{{boot}}", boot)


async def page(request: web.Request) -> web.StreamResponse:
    lang = pick_language(request.headers.get("Accept-Language"),
                         request.cookies.get(LANG_COOKIE))
    return web.Response(text=render_page(request.app[SETTINGS], lang),
                        content_type="text/html", charset="utf-8",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-store",
                                 "Content-Language": "zh-CN" if lang == "zh" else "en",
                                 "Vary": "Accept-Language, Cookie"})


async def to_page(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/desk/")


async def session(request: web.Request) -> web.StreamResponse:
    """The role of the bearer token (the sign-in check); 401 for none or an unknown one."""
    role = role_of(request.headers.get("Authorization"), request.app[SETTINGS].api_tokens)
    if role is None:
        return json_response({"error": "unauthorized", "message": "unknown token"},
                             status=401, headers={"Cache-Control": "no-store"})
    return json_response({"role": role, "numbers": role in ("supervisor", "admin")},
                         headers={"Cache-Control": "no-store"})


STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}


async def static(request: web.Request) -> web.StreamResponse:
    """desk.js and desk.css from the package (no directory listing, no other files)."""
    name = request.match_info["name"]
    kind = STATIC_TYPES.get(name[name.rfind("."):]) if "." in name else None
    item = STATIC / name
    if kind is None or "/" in name or not item.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=item.read_bytes(), content_type=kind, charset="utf-8",
                        headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", to_page)  # a newcomer opening the server's address finds the desk
    app.router.add_get("/desk", to_page)
    app.router.add_get("/desk/", page)
    app.router.add_get("/desk/session", session)
    app.router.add_get("/desk/static/{name}", static)
