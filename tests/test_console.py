"""The pages in a real headless Chromium (Debian's package, driven by Playwright) against the real process set: the
web app on a real HTTP server, the stream process (gunicorn + gevent, web/stream_conf.py) on its own port, the
test run's Celery worker settling purchases, PostgreSQL and Redis. A fan buys through the API; the model's console
shows the entry within a second without a reload; the model starts and completes it; the overlay and the fan page
follow. Screenshots go to test-artifacts/ (README). Also: sign-in cookies and CSRF, the security headers, the
overlay's secret URL, keyboard use and an axe-core check of the console."""
from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import quote

import pytest
import requests
from conftest import ROOT, assert_books_balance, make_settings, new_session, subprocess_env
from processes import ProcessGroup, free_port, wait_http
from sse_client import EventStream
from werkzeug.serving import make_server

from models.users import User
from web import create_app

pytestmark = pytest.mark.usefixtures("celery_worker")

ARTIFACTS = os.path.join(ROOT, "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PHOTO = {"name": "Photo", "token_value": 50, "estimated_duration_minutes": 5}
KISS = {"name": "Kiss", "token_value": 10}


@pytest.fixture(scope="module")
def stream_url(database):
    port = free_port()
    server = ProcessGroup("stream", [sys.executable, "-m", "gunicorn", "-c", "python:web.stream_conf", "web.wsgi:app"],
                          subprocess_env(STREAM_PORT=port, STREAM_HEARTBEAT_SECONDS=1)).start()
    wait_http(f"http://127.0.0.1:{port}/healthz", process=server)
    yield f"http://127.0.0.1:{port}/events/stream"
    server.stop()


@pytest.fixture(scope="module")
def web(stream_url):
    """The web app on a real threaded HTTP server on 127.0.0.1 (plain http on this machine: cookies not Secure)."""
    app = create_app(make_settings(stream_url=stream_url))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (Debian's package)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])  # nothing but this machine
        yield browser
        browser.close()


@pytest.fixture
def browser_context(browser):
    """New browser contexts (each its own cookies), closed when the test ends, passed or not."""
    made = []

    def new(**options):
        made.append(browser.new_context(**options))
        return made[-1]

    yield new
    for context in made:
        context.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def screenshot(page, name: str, **options) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, name), full_page=True, **options)


def person(factory, role, name=None, tokens=0):
    user = factory.user(role, tokens=tokens)
    if name:
        s = new_session()
        try:
            s.get(User, user.id).display_name = name
            s.commit()
        finally:
            s.close()
    return user


def open_page(browser_context, web, user, path):
    """A new browser context (its own cookies) signed in through the login form, on `path`, its stream live."""
    context = browser_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{web}/console/login?next={quote(path)}")
    page.fill("#username", user.username)
    page.fill("#password", "pw")
    page.click("form button[type=submit]")
    page.wait_for_url(f"{web}{path}")
    expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
    return page


def bearer(web, user) -> dict:
    r = requests.post(f"{web}/auth/login", json={"username": user.username, "password": "pw"}, timeout=10)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def buy(web, headers, menu, item, **fields) -> str:
    r = requests.post(f"{web}/menu/purchase", headers=headers, timeout=30,
                      json={"menu_id": str(menu.id), "menu_item_id": str(item.id),
                            "idempotency_key": uuid.uuid4().hex, **fields})
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    return r.json()["purchase_id"]


def row(page, purchase_id):
    return page.locator(f'tr[data-purchase-id="{purchase_id}"]')


def test_a_purchase_reaches_the_console_live_and_the_overlay_and_fan_page_follow(browser_context, web, factory):
    model = person(factory, "model", "Mia")
    fan = person(factory, "fan", "Ana", tokens=1000)
    shy = person(factory, "fan", "Shy Sam", tokens=1000)
    menu = factory.menu(model, items=[PHOTO, KISS], queue_mode="ON", name="Requests")
    photo, kiss = menu.created_items

    console = open_page(browser_context, web, model, "/console")
    console.click("#overlay-rotate")
    expect(console.locator("#overlay-url")).to_have_value(re.compile(f"^{re.escape(web)}/overlay/.+"))
    overlay_url = console.input_value("#overlay-url")
    overlay_context = browser_context(viewport={"width": 480, "height": 640})  # OBS: no cookies
    overlay = overlay_context.new_page()
    overlay.goto(overlay_url)
    expect(overlay.locator("#menus")).to_contain_text("Requests")
    expect(overlay.locator("#menus")).to_contain_text("50 tk")
    fan_page = open_page(browser_context, web, fan, f"/fan?model={model.id}")
    expect(fan_page.locator("#menus")).to_contain_text("Photo")

    # A fan buys through the API: the console shows the entry within a second, with no reload.
    note = "<b>red dress</b> & smile"
    purchase = buy(web, bearer(web, fan), menu, photo, note=note)
    expect(row(console, purchase)).to_be_visible(timeout=1000)
    expect(row(console, purchase).locator("td.fan")).to_have_text("Ana")
    expect(row(console, purchase).locator("td.note")).to_have_text(note)  # escaped: shown as text, not markup
    expect(row(console, purchase).locator("td.item")).to_have_text("Photo")
    anonymous = buy(web, bearer(web, shy), menu, kiss, anonymous=True, note="secret wish")
    expect(row(console, anonymous).locator("td.fan")).to_have_text("anonymous", timeout=1000)
    expect(overlay.locator("#next")).to_contain_text("Photo - Ana")
    expect(overlay.locator("#next li").nth(1)).to_have_text("Kiss")  # no name for an anonymous buyer
    expect(fan_page.locator(f'li[data-purchase-id="{purchase}"] .status')).to_have_text("queued, position 1")
    screenshot(console, "console.png")

    # The overlay's state is public by key: no fan ids, no notes, no anonymous buyer's name.
    key = overlay_url.rsplit("/", 1)[1]
    state = requests.get(f"{web}/overlay/state", headers={"X-Overlay-Key": key}, timeout=10)
    assert state.status_code == 200
    for secret in (str(fan.id), str(shy.id), "Shy Sam", "secret wish", "red dress", "fan_id", "note"):
        assert secret not in state.text

    console.click(f'tr[data-purchase-id="{purchase}"] button[data-action="start"]')
    expect(row(console, purchase)).to_have_attribute("data-status", "in_progress")
    expect(overlay.locator("#now-performing")).to_be_visible()
    expect(overlay.locator("#now-item")).to_have_text("Photo - Ana")
    expect(fan_page.locator(f'li[data-purchase-id="{purchase}"] .status')).to_have_text("being performed now")
    screenshot(overlay, "overlay.png", omit_background=True)  # transparent, as OBS shows it

    console.click(f'tr[data-purchase-id="{purchase}"] button[data-action="complete"]')
    expect(row(console, purchase)).to_have_count(0)
    expect(overlay.locator("#now-performing")).to_be_hidden()
    expect(fan_page.locator(f'li[data-purchase-id="{purchase}"] .status')).to_have_text("completed")
    expect(fan_page.locator("#balance")).to_have_text("950")
    screenshot(fan_page, "fan.png")

    # Revoked: the overlay URL answers nothing any more.
    console.click("#overlay-revoke")
    expect(console.locator("#overlay-status")).to_have_text("No overlay URL.")
    assert requests.get(overlay_url, timeout=10).status_code == 404


def test_the_fan_page_buys_with_a_note_anonymously_and_the_show_ends_with_refund_all(browser_context, web, factory):
    model = person(factory, "model", "Mia")
    fan = person(factory, "fan", "Ana", tokens=1000)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON", name="Requests")
    console = open_page(browser_context, web, model, "/console")
    console.click("#show-start")
    expect(console.locator("#show-status")).to_contain_text("live since")

    fan_page = open_page(browser_context, web, fan, f"/fan?model={model.id}")
    fan_page.fill("#note", "wave at the camera")
    fan_page.check("#anonymous")
    fan_page.click('button[aria-label="Buy Photo for 50 tokens"]')
    first = fan_page.locator("#purchases li").first
    expect(first.locator(".status")).to_have_text("queued, position 1", timeout=10_000)
    purchase = first.get_attribute("data-purchase-id")
    expect(row(console, purchase).locator("td.note")).to_have_text("wave at the camera")
    expect(row(console, purchase).locator("td.fan")).to_have_text("anonymous")
    fan_page.click('button[aria-label="Buy Photo for 50 tokens"]')
    expect(console.locator("#queue-rows tr")).to_have_count(2)

    console.select_option("#show-end-mode", "refund_all")
    console.click("#show-end")
    expect(console.locator("#queue-rows tr")).to_have_count(0)
    expect(console.locator("#show-status")).to_contain_text("offline")
    expect(fan_page.locator("#purchases li .status").first).to_have_text("refunded (show ended)")
    expect(fan_page.locator("#purchases li .status").nth(1)).to_have_text("refunded (show ended)")
    expect(fan_page.locator("#balance")).to_have_text("1000")
    assert_books_balance()


def test_the_console_works_from_the_keyboard_with_no_serious_axe_violations(browser_context, web, factory):
    from axe_playwright_python.sync_playwright import Axe

    model = person(factory, "model", "Mia")
    fan = person(factory, "fan", "Ana", tokens=1000)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON", name="Requests")
    purchase = buy(web, bearer(web, fan), menu, menu.created_items[0], note="hi")
    console = open_page(browser_context, web, model, "/console")
    start = console.locator(f'tr[data-purchase-id="{purchase}"] button[data-action="start"]')
    expect(start).to_be_visible()

    results = Axe().run(console)
    serious = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], results.generate_report()
    for control in console.locator("button, select, input, textarea").all():
        assert control.evaluate("e => !!(e.labels && e.labels.length) || !!e.getAttribute('aria-label') || "
                                "!!e.textContent.trim()"), control.evaluate("e => e.outerHTML")

    console.locator("body").focus()
    for _ in range(60):  # Tab through the page until the Start button has the focus
        console.keyboard.press("Tab")
        if start.evaluate("e => e === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the Start button")
    console.keyboard.press("Enter")
    expect(row(console, purchase)).to_have_attribute("data-status", "in_progress")


# --- cookies, CSRF and headers (no browser needed) --------------------------------------------------------------

def form_login(session: requests.Session, web, username, password="pw", **extra):
    page = session.get(f"{web}/console/login", timeout=10)
    token = page.text.split('name="form_token" value="', 1)[1].split('"', 1)[0]
    return session.post(f"{web}/console/login", data={"form_token": token, "username": username,
                                                      "password": password, **extra},
                        allow_redirects=False, timeout=10)


def set_cookies(response) -> dict[str, str]:
    return {c.split("=", 1)[0]: c for c in response.raw.headers.getlist("Set-Cookie")}


def test_cookie_sign_in_csrf_refresh_and_logout(web, factory):
    model = person(factory, "model")
    fan = person(factory, "fan", tokens=100)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON")
    purchase = buy(web, bearer(web, fan), menu, menu.created_items[0])
    s = requests.Session()

    # The login form needs its signed token and the cookie it was made for (a cross-site page has neither).
    assert requests.post(f"{web}/console/login", data={"username": model.username, "password": "pw"},
                         allow_redirects=False, timeout=10).status_code == 400
    stolen = s.get(f"{web}/console/login", timeout=10).text.split('name="form_token" value="', 1)[1].split('"', 1)[0]
    assert requests.post(f"{web}/console/login", data={"form_token": stolen, "username": model.username,
                                                       "password": "pw"}, allow_redirects=False,
                         timeout=10).status_code == 400  # a form token without the browser's own cookie
    assert form_login(s, web, model.username, "wrong").status_code == 401
    # Issue 28, items 13 and 14: a tab that browsers drop ("/\t/host" is "//host") and a line feed.
    for bad in ("/\t/evil.example/", "/\n/evil.example/", "/console\r\nSet-Cookie: x=1"):
        assert requests.get(f"{web}/console/login", params={"next": bad}, timeout=10).status_code == 200
        r = form_login(requests.Session(), web, model.username, next=bad)
        assert r.status_code == 303 and r.headers["Location"] == "/console", (bad, r.headers)
    r = form_login(s, web, model.username, next="//evil.example/")
    assert r.status_code == 303 and r.headers["Location"] == "/console"  # no open redirect
    cookies = set_cookies(r)
    for name in ("perfmenu_access", "perfmenu_refresh"):
        assert "HttpOnly" in cookies[name] and "SameSite=Strict" in cookies[name], cookies[name]
        assert "Secure" not in cookies[name]  # plain http on 127.0.0.1
    assert "HttpOnly" not in cookies["perfmenu_csrf_access"]  # the page's script reads it
    assert s.get(f"{web}/console", timeout=10).status_code == 200

    # A write with the cookie needs the double-submit CSRF value.
    assert s.post(f"{web}/queue/{purchase}/start", timeout=10).status_code == 401
    csrf = {"X-CSRF-TOKEN": s.cookies["perfmenu_csrf_access"]}
    assert s.post(f"{web}/queue/{purchase}/start", headers=csrf, timeout=10).status_code == 200
    # The API's own refresh never takes the cookie (it answers tokens in JSON).
    assert requests.post(f"{web}/auth/refresh", cookies={"perfmenu_refresh": s.cookies["perfmenu_refresh"]},
                         headers={"X-CSRF-TOKEN": s.cookies["perfmenu_csrf_refresh"]}, timeout=10).status_code == 401

    # The refresh cookie is spent for new cookies; a spent one ends the session (reuse detection).
    old_refresh = s.cookies["perfmenu_refresh"]
    assert s.post(f"{web}/console/refresh", timeout=10).status_code == 401  # no CSRF value
    r = s.post(f"{web}/console/refresh", headers={"X-CSRF-TOKEN": s.cookies["perfmenu_csrf_refresh"]}, timeout=10)
    assert r.status_code == 204 and s.cookies["perfmenu_refresh"] != old_refresh
    assert s.get(f"{web}/queue", timeout=10).status_code == 200
    access = s.cookies["perfmenu_access"]

    # Logout ends the sign-in session, as /auth/logout does: its tokens are refused from then on.
    r = s.post(f"{web}/console/logout", data={"csrf_token": s.cookies["perfmenu_csrf_access"]},
               allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"].endswith("/console/login")
    gone = requests.get(f"{web}/queue", headers={"Authorization": f"Bearer {access}"}, timeout=10)
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "token_revoked"
    assert s.get(f"{web}/console", allow_redirects=False, timeout=10).status_code == 303


def test_an_expired_access_cookie_is_refreshed_by_the_page_and_by_the_script(database, factory):
    app = create_app(make_settings())
    app.config["JWT_ACCESS_TOKEN_EXPIRES"] = timedelta(seconds=1)
    model = person(factory, "model")
    client = app.test_client()
    page = client.get("/console/login")
    token = page.text.split('name="form_token" value="', 1)[1].split('"', 1)[0]
    assert client.post("/console/login", data={"form_token": token, "username": model.username,
                                                "password": "pw"}).status_code == 303
    time.sleep(1.5)
    expired = client.get("/queue")
    assert expired.status_code == 401 and expired.json["error"]["code"] == "token_expired"
    # What the script does on that answer: spend the refresh cookie, then the call works again.
    csrf = client.get_cookie("perfmenu_csrf_refresh").value
    assert client.post("/console/refresh", headers={"X-CSRF-TOKEN": csrf}).status_code == 204
    assert client.get("/queue").status_code == 200
    # A page load after the access token expired refreshes on its own.
    time.sleep(1.5)
    r = client.get("/console")
    assert r.status_code == 200 and "perfmenu_access=" in " ".join(r.headers.getlist("Set-Cookie"))
    assert client.get("/queue").status_code == 200


def test_cookies_are_secure_unless_served_over_plain_http_on_this_machine(database, factory):
    model = person(factory, "model")
    client = create_app(make_settings()).test_client()
    page = client.get("/console/login", base_url="https://perfmenu.example")
    token = page.text.split('name="form_token" value="', 1)[1].split('"', 1)[0]
    r = client.post("/console/login", base_url="https://perfmenu.example",
                    data={"form_token": token, "username": model.username, "password": "pw"})
    assert r.status_code == 303
    assert all("; Secure" in c for c in r.headers.getlist("Set-Cookie") if c.startswith("perfmenu_"))
    assert r.headers["Strict-Transport-Security"]


def test_security_headers_on_pages_api_answers_and_docs(web, factory):
    login = requests.get(f"{web}/console/login", timeout=10)
    api = requests.get(f"{web}/healthz", timeout=10)
    error = requests.get(f"{web}/queue", timeout=10)
    docs = requests.get(f"{web}/docs", timeout=10)
    for r in (login, api, error, docs):
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "camera=()" in r.headers["Permissions-Policy"]
    page_policy = login.headers["Content-Security-Policy"]
    assert "script-src 'self';" in page_policy and "'unsafe-inline'" not in page_policy
    assert "frame-ancestors 'none'" in page_policy
    assert "connect-src 'self' http://127.0.0.1:" in page_policy
    for r in (api, error):
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "script-src 'self' 'sha256-" in docs.headers["Content-Security-Policy"]
    assert "<script>" not in login.text  # no inline script on our pages


def test_the_overlay_stream_tells_only_which_event_happened(web, stream_url, factory):
    model = person(factory, "model", "Mia")
    fan = person(factory, "fan", "Ana", tokens=100)
    menu = factory.menu(model, items=[PHOTO], queue_mode="ON")
    s = requests.Session()
    form_login(s, web, model.username)
    link = s.post(f"{web}/overlay-link", headers={"X-CSRF-TOKEN": s.cookies["perfmenu_csrf_access"]}, timeout=10)
    assert link.status_code == 201
    key = link.json()["url"].rsplit("/", 1)[1]
    assert requests.post(f"{web}/overlay/ticket", json={"key": key + "x"}, timeout=10).status_code == 404
    ticket = requests.post(f"{web}/overlay/ticket", json={"key": key}, timeout=10)
    assert ticket.status_code == 201 and ticket.json()["stream_url"].startswith(stream_url)
    stream = EventStream(ticket.json()["stream_url"])
    try:
        assert stream.status_code == 200
        assert stream.response.headers["Access-Control-Allow-Origin"] == "*"
        stream.wait_for(lambda _m: stream.comments > 0, what="connected")
        buy(web, bearer(web, fan), menu, menu.created_items[0], note="private")
        got = stream.wait_for(lambda m: any(x["event"] == "purchase.queued" for x in m), what="purchase.queued")
        assert all(set(m["data"]) == {"id", "type"} for m in got), got
    finally:
        stream.close()
    # Rotated: the old key opens nothing.
    rotated = s.post(f"{web}/overlay-link", headers={"X-CSRF-TOKEN": s.cookies["perfmenu_csrf_access"]},
                     timeout=10).json()["url"].rsplit("/", 1)[1]
    assert requests.get(f"{web}/overlay/{key}", timeout=10).status_code == 404
    assert requests.get(f"{web}/overlay/state", headers={"X-Overlay-Key": key}, timeout=10).status_code == 404
    # Issue 28, item 18: a deactivated model's overlay opens nothing either.
    assert requests.get(f"{web}/overlay/state", headers={"X-Overlay-Key": rotated}, timeout=10).status_code == 200
    admin = bearer(web, person(factory, "admin"))
    assert requests.post(f"{web}/admin/users/{model.id}/deactivate", headers=admin, timeout=10).status_code == 200
    assert requests.get(f"{web}/overlay/{rotated}", timeout=10).status_code == 404
    assert requests.get(f"{web}/overlay/state", headers={"X-Overlay-Key": rotated}, timeout=10).status_code == 404
    assert requests.post(f"{web}/overlay/ticket", json={"key": rotated}, timeout=10).status_code == 404


def test_a_model_signs_in_to_the_console_with_a_platform_token(database):
    from fake_platform import AUDIENCE, ISSUER, FakePlatform

    platform = FakePlatform()
    platform.add_key("k1")
    try:
        app = create_app(make_settings(platform_jwt_jwks_url=platform.jwks_url, platform_jwt_issuer=ISSUER,
                                       platform_jwt_audience=AUDIENCE))
        client = app.test_client()
        page = client.get("/console/login")
        assert 'name="platform_token"' in page.text
        token = page.text.split('name="form_token" value="', 1)[1].split('"', 1)[0]
        forged = platform.token("65a1f0c2e4b0a1b2c3d4e5f9", "model", "k1", aud="someone-else")
        assert client.post("/console/login", data={"form_token": token, "platform_token": forged}).status_code == 401
        good = platform.token("65a1f0c2e4b0a1b2c3d4e5f9", "model", "k1", name="Mia")
        r = client.post("/console/login", data={"form_token": token, "platform_token": good})
        assert r.status_code == 303 and r.headers["Location"] == "/console"
        console = client.get("/console")
        assert console.status_code == 200 and "Console" in console.text
        assert client.get("/queue").status_code == 200  # the cookie's session is ours: the API takes it
    finally:
        platform.stop()


@pytest.mark.parametrize("method,path,kwargs", [
    ("POST", "/console/login", {"data": {"form_token": "x" * 5000, "username": "\x00",
                                         "password": "\u202e" * 300}}),
    ("POST", "/console/login", {"json": [1, 2]}),
    ("POST", "/console/login", {"data": b"\xff\xfe" * 100, "content_type": "application/x-www-form-urlencoded"}),
    ("POST", "/console/refresh", {"headers": {"Cookie": "perfmenu_refresh=" + "A" * 3000}}),
    ("POST", "/console/logout", {"headers": {"Cookie": "perfmenu_access=not.a.jwt"}}),
    ("GET", "/console", {"headers": {"Cookie": "perfmenu_access=a.b.c; perfmenu_refresh=d.e.f"}}),
    ("GET", "/fan?model=" + "%00" * 50, {}),
    ("GET", "/fan?model=65a1f0c2e4b0a1b2c3d4e5f7", {}),
    ("GET", "/overlay/" + "k" * 300, {}),
    ("GET", "/overlay/state", {"headers": {"X-Overlay-Key": "\u00e9" * 200}}),
    ("POST", "/overlay/ticket", {"data": "{not json", "content_type": "application/json"}),
    ("POST", "/overlay/ticket", {"json": {"key": ["a"]}}),
    ("POST", "/overlay/ticket", {"json": {"key": "x" * 10_000}}),
])
def test_the_pages_answer_hostile_input_without_a_server_error(database, method, path, kwargs):
    client = create_app(make_settings()).test_client()
    r = client.open(path, method=method, **kwargs)
    assert r.status_code < 500, (r.status_code, r.data[:300])
