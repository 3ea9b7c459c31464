"""The desk's own routes over HTTP: language choice, headers, static files, the sign-in check,
and both text catalogues complete for everything the page's script says."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import pytest
from desk_fixtures import Desk
from store_fixtures import TOKENS, auth

from callhub.api.schemas import SmsStatus
from callhub.config import ROLES
from callhub.desk import i18n
from callhub.records import ATTEMPT_RESULTS, OUTCOMES, REASONS
from callhub.store import followups, resolution, worklist
from callhub.store.queries import NO_RESOLUTION

DESK = Path(i18n.__file__).parent
SCRIPT = (DESK / "static" / "desk.js").read_text("utf-8")
PAGE = (DESK / "templates" / "page.html").read_text("utf-8")


def boot_of(html: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="boot">(.*?)</script>', html, re.S)
    assert match, "the page embeds its boot data"
    data: dict[str, object] = json.loads(match.group(1))
    return data


@pytest.mark.parametrize(("accept", "cookie", "lang", "nav"), [
    ("zh-CN,zh;q=0.9,en;q=0.8", None, "zh", "待回电"),
    ("en-US,en;q=0.9,zh;q=0.5", None, "en", "Worklist"),
    ("de-DE,de;q=0.9", None, "en", "Worklist"),
    ("de;q=0.9,zh-TW;q=0.8,en;q=0.7", None, "zh", "待回电"),
    ("en-US,en;q=0.9", "zh", "zh", "待回电"),
    ("zh-CN", "en", "en", "Worklist"),
    ("zh-CN", "fr", "zh", "待回电"),
])
async def test_the_page_speaks_the_browsers_language_unless_the_user_chose(
        desk: Desk, accept: str, cookie: str | None, lang: str, nav: str) -> None:
    headers = {"Accept-Language": accept}
    if cookie:
        headers["Cookie"] = f"callhub_lang={cookie}"
    response = await desk.client.get("/desk/", headers=headers)
    assert response.status == 200
    html = await response.text()
    assert nav in html
    boot = boot_of(html)
    assert boot["lang"] == lang and boot["strings"] == i18n.CATALOGUES[lang]
    assert boot["categories"] == list(desk.settings.categories)
    assert boot["timezone"] == "Asia/Shanghai" and boot["poll_seconds"] == 0.5
    assert response.headers["Content-Language"].startswith(lang)


async def test_the_page_sends_no_data_and_strict_headers(desk: Desk) -> None:
    response = await desk.client.get("/desk/")
    html = await response.text()
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    for token in TOKENS.values():
        assert token not in html
    # Only this server's own assets: no http(s) URL to anywhere else in page, script or style.
    css = (DESK / "static" / "desk.css").read_text("utf-8")
    for text in (html, SCRIPT, css):
        assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text) == []
    redirect = await desk.client.get("/desk", allow_redirects=False)
    assert redirect.status == 302 and redirect.headers["Location"] == "/desk/"
    # The server's own address leads a newcomer to the desk.
    root = await desk.client.get("/", allow_redirects=False)
    assert root.status == 302 and root.headers["Location"] == "/desk/"
    assert (await desk.client.get("/")).url.path == "/desk/"


async def test_static_files_are_served_and_nothing_else(desk: Desk) -> None:
    js = await desk.client.get("/desk/static/desk.js")
    assert js.status == 200 and js.content_type == "text/javascript"
    assert await js.text() == SCRIPT
    css = await desk.client.get("/desk/static/desk.css")
    assert css.status == 200 and css.content_type == "text/css"
    for name in ("missing.js", "..%2fpages.py", "%2e%2e%2fi18n.py", "pages.py", "desk"):
        assert (await desk.client.get(f"/desk/static/{name}")).status == 404, name


async def test_the_session_check_tells_the_role_and_refuses_unknown_tokens(desk: Desk) -> None:
    for role in ROLES:
        response = await desk.client.get("/desk/session", headers=auth(role))
        assert response.status == 200
        assert await response.json() == {"role": role,
                                         "numbers": role in ("supervisor", "admin")}
    for headers in ({}, {"Authorization": "Bearer nope-nope-nope"},
                    {"Authorization": f"Basic {TOKENS['admin']}"}):
        response = await desk.client.get("/desk/session", headers=headers)
        assert response.status == 401
        assert "role" not in await response.json()


async def test_numbers_reach_only_supervisor_and_admin_tokens(desk: Desk) -> None:
    """The page gets every number from the API, which gives viewers none."""
    for path in ("/api/v1/worklist", "/api/v1/calls", "/api/v1/followups"):
        assert (await desk.client.get(path, headers=auth("viewer"))).status == 403
        assert (await desk.client.get(path, headers=auth("supervisor"))).status == 200
    assert (await desk.client.get("/api/v1/stats", headers=auth("viewer"))).status == 200


def test_both_catalogues_have_the_same_keys_and_no_empty_text() -> None:
    assert set(i18n.EN) == set(i18n.ZH)
    for lang, strings in i18n.CATALOGUES.items():
        for key, text in strings.items():
            assert text.strip(), f"{lang}:{key} is empty"
        # The same placeholders in both languages.
    for key in i18n.EN:
        assert set(re.findall(r"\{(\w+)\}", i18n.EN[key])) == set(
            re.findall(r"\{(\w+)\}", i18n.ZH[key])), key
    chinese = re.compile(r"[\u4e00-\u9fff]")
    untranslated = [k for k in i18n.ZH if i18n.ZH[k] == i18n.EN[k]
                    and not k.startswith(("unit.",)) and chinese.search(i18n.ZH[k]) is None]
    assert untranslated == []


def test_every_text_the_script_and_page_use_is_in_the_catalogues_and_none_is_unused() -> None:
    literal = {k for k in re.findall(r'\bt\("([\w.]+)"', SCRIPT) if not k.endswith(".")}
    # Keys passed around before t() sees them: any "area.name" string literal.
    areas = {k.split(".")[0] for k in i18n.EN}
    passed = {k for k in re.findall(r'"([a-z]+\.[A-Za-z]+)"', SCRIPT)
              if k.split(".")[0] in areas}
    prefixes = set(re.findall(r'\btv\("(\w+)"', SCRIPT)) | {"role"}
    dynamic = {
        "outcome": OUTCOMES, "direction": ("inbound", "outbound", "internal"),
        "reason": REASONS, "result": ATTEMPT_RESULTS, "transfer": ("blind", "attended"),
        "hangup": ("external", "agent", "system"), "category": ("inquiry", "complaint",
                                                                "repair", "other"),
        "wstatus": worklist.STATUSES, "fstatus": followups.STATUSES, "how": followups.HOWS,
        "role": ROLES, "sms": get_args(SmsStatus),
        "res": (*resolution.RESOLUTIONS, NO_RESOLUTION), "sat": resolution.SATISFACTIONS,
    }
    assert prefixes <= set(dynamic), prefixes - set(dynamic)
    needed = literal | {f"{p}.{v}" for p in prefixes for v in dynamic[p]}
    server = {"title", "nav.worklist", "nav.calls", "nav.today", "nav.sms", "language",
              "signout", "noscript"}
    assert (needed | passed) - set(i18n.EN) == set()
    assert set(i18n.EN) - needed - passed - server == set(), "unused text"
    for key in re.findall(r"\{\{(\w+)\}\}", PAGE):
        assert key in ("html_lang", "title", "nav_worklist", "nav_calls", "nav_today",
                       "nav_sms", "language", "sign_out", "noscript", "version", "boot",
                       "zh_current", "en_current")


@pytest.mark.parametrize(("header", "cookie", "expected"), [
    (None, None, "en"), ("", None, "en"), ("zh", None, "zh"), ("zh-Hans-CN", None, "zh"),
    ("en;q=0.1, zh;q=0.2", None, "zh"), ("zh;q=0, en", None, "en"),
    ("fr, de", None, "en"), ("zh;q=abc, en;q=0.5", None, "en"), ("EN-gb", "zh", "zh"),
    # A q that is no weight (not a number, infinite, over 1) counts as none.
    ("zh;q=nan, en;q=0.5", None, "en"), ("zh;q=inf, en;q=0.5", None, "en"),
    ("zh;q=2, en;q=0.5", None, "en"),
])
def test_pick_language(header: str | None, cookie: str | None, expected: str) -> None:
    assert i18n.pick_language(header, cookie) == expected
