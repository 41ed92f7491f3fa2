"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

The whole service runs as the Procfile's processes with the fake gateway serving real MP4
files, so the page's ``<video>`` element has a file it can decode. Without chromium the tests
skip on a laptop and fail in CI (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support import Service, module_service
from worker.core.videos import VideoRecord, VideoState
from worker.state.videos import Videos

ROOT = Path(__file__).resolve().parents[2]
# The README's picture: written there only when asked (DASHBOARD_SCREENSHOT=docs/dashboard.png),
# so a test run leaves the checkout as it found it.
SCREENSHOT_TO = os.environ.get("DASHBOARD_SCREENSHOT")

# Tasks take 1.5 s at the gateway: long enough to watch a chain grow and to cancel one.
svc = module_service("dashboard", delay=1.5, gateway_args=("--video-format", "mp4"))


def chromium_path() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # As root (CI containers) chromium refuses to start with its sandbox on.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own session storage) at 1280x800, failing on any script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.set_default_timeout(20_000)
    yield tab
    context.close()
    assert errors == [], f"the page raised: {errors}"


def sign_in(page: Page, svc: Service) -> None:
    page.goto(f"{svc.api}/")
    page.locator("#login").wait_for(state="visible")
    page.fill("#token", svc.env["API_TOKEN"])
    page.click("#login-form button[type=submit]")
    page.locator("#nav").wait_for(state="visible")


def start_from_form(page: Page, fields: dict[str, str]) -> str:
    """Fill the start form, send it, and return the new chain's id (its page opens)."""
    page.click("a[data-nav=new]")
    page.locator("#chain-form").wait_for()
    for name, value in fields.items():
        page.fill(f"#f-{name}", value)
    page.click("#start")
    page.wait_for_url("**/#/chains/*")
    return page.url.rsplit("/", 1)[1]


def api_chain(svc: Service, chain_id: str) -> dict[str, Any]:
    return svc.chain(chain_id)


@pytest.mark.timeout(300)
def test_start_watch_play_and_cancel_from_the_dashboard(
    svc: Service, page: Page, tmp_path: Path
) -> None:
    # Given a signed-in dashboard
    sign_in(page, svc)
    assert page.evaluate("sessionStorage.length") == 1
    assert page.context.cookies() == []  # no cookie: nothing for a cross-site request to carry

    # The form shows the API's own validation messages next to the fields, and sends nothing
    before = svc.stats()["creates_total"]
    page.click("a[data-nav=new]")
    page.fill("#f-video_id", "vid_x")
    page.fill("#f-target_seconds", "500")
    page.click("#start")
    target_error = page.locator('[data-error-for="target_seconds"]')
    target_error.wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-error-for=\"target_seconds\"]').textContent !== ''"
    )
    assert "180" in target_error.text_content()  # type: ignore[operator]
    assert page.locator("#form-error").text_content() == "invalid chain request"
    assert svc.stats()["creates_total"] == before

    # When a chain is started with the form
    seed = svc.seed(5.0)
    chain_id = start_from_form(
        page,
        {
            "video_id": seed["video_id"],
            "task_id": seed["task_id"],
            "source_duration": "5",
            "target_seconds": "14",
            "prompt": "the camera drifts forward",
        },
    )

    # Then the list shows it growing live (no reload) until its bar is full
    page.click("a[data-nav=chains]")
    row = page.locator(f"tr[data-chain='{chain_id}']")
    row.wait_for()
    page.evaluate("window.__same_page = true")
    seen: list[tuple[str, float]] = []
    deadline = time.monotonic() + 120
    while True:
        status = row.get_attribute("data-status") or ""
        value = float(row.locator("progress").evaluate("p => p.value"))
        if not seen or seen[-1] != (status, value):
            seen.append((status, value))
        if status in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert status == "succeeded", seen
    assert seen[0][0] != "succeeded", "the first view already showed the end: nothing was watched"
    assert page.evaluate("window.__same_page") is True
    bar = row.locator("progress")
    assert bar.evaluate("p => p.value") == bar.evaluate("p => p.max") == 14
    final = api_chain(svc, chain_id)
    assert final["duration"] >= 14
    assert row.locator(".progress-text").text_content() == f"{final['duration']:.1f} / 14 s"
    done = sum(1 for s in final["steps"] if s["status"] == "succeed")
    assert row.locator("td").nth(3).text_content() == f"{done} / —"

    # When its page is opened
    row.locator("a").click()
    page.wait_for_url(f"**/#/chains/{chain_id}")
    # Then its steps show their task ids and times, and the final video plays the archived file
    steps = page.locator("#steps-body tr")
    steps.first.wait_for()
    assert steps.count() == len(final["steps"])
    first = steps.first.locator("td")
    assert first.nth(3).text_content() == final["steps"][0]["task_id"]
    assert first.nth(4).text_content() != "—"  # submitted at
    assert first.nth(6).text_content() != "—"  # done at
    video = page.locator("#final-video")
    video.wait_for()
    page.wait_for_function(
        "() => { const v = document.getElementById('final-video');"
        " return v && (v.readyState >= 1 || v.error); }",
        timeout=30_000,
    )
    assert video.evaluate("v => v.error && v.error.message") is None
    assert video.evaluate("v => v.readyState") >= 1
    newest = next(s for s in reversed(final["steps"]) if s["status"] == "succeed")
    assert video.get_attribute("data-video") == newest["video_id"]
    assert abs(video.evaluate("v => v.duration") - final["duration"]) < 0.5
    src = video.evaluate("v => v.currentSrc")
    assert f"/files/{newest['video_id']}?expires=" in src
    archive_rows = page.locator("#archive-body tr")
    assert archive_rows.count() == len(final["archive"])
    assert page.locator("#cancel").is_disabled()

    # When a second, longer chain is started and cancelled from its page
    seed = svc.seed(5.0)
    second = start_from_form(
        page, {"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": "8"}
    )
    page.locator("#chain-status [data-status]").wait_for()
    page.wait_for_function("() => !document.getElementById('cancel').disabled")
    page.click("#cancel")
    # Then it ends cancelled, shown on the page and by the API
    page.wait_for_selector("#chain-status [data-status=cancelled]", timeout=60_000)
    assert api_chain(svc, second)["status"] == "cancelled"
    assert page.locator("#resume").is_enabled()
    assert len(api_chain(svc, second)["steps"]) < 8

    # The list, as the README shows it
    page.click("a[data-nav=chains]")
    page.locator(f"tr[data-chain='{second}'][data-status=cancelled]").wait_for()
    page.locator(f"tr[data-chain='{chain_id}'][data-status=succeeded]").wait_for()
    page.wait_for_function("() => document.getElementById('acct-units').textContent !== '—'")
    shot = ROOT / SCREENSHOT_TO if SCREENSHOT_TO else tmp_path / "dashboard.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    # The status filter shows only the chains of that status
    page.select_option("#status-filter", "cancelled")
    page.wait_for_url("**/#/chains?status=cancelled")
    page.locator(f"tr[data-chain='{chain_id}']").wait_for(state="detached")
    # The old rows go as the filtered page is asked for: wait for it before counting.
    page.locator(f"tr[data-chain='{second}'][data-status=cancelled]").wait_for()
    assert page.locator(f"tr[data-chain='{second}']").count() == 1


def manifest_entry(
    video_id: str, *, age_days: float, state: VideoState = VideoState.PENDING, error: str = ""
) -> VideoRecord:
    """A video of the account made ``age_days`` ago; the archive sweep leaves it alone for an
    hour (its next attempt is due then), so the page shows it as written."""
    now = time.time()
    return VideoRecord(
        video_id,
        f"task_{video_id}",
        "video_extend",
        f"https://cdn.example/{video_id}.mp4",
        created_at=now - age_days * 86400,
        known_at=now,
        state=state,
        error=error or None,
        next_attempt_at=now + 3600,
    )


def test_the_token_in_the_address_moves_to_the_session_and_log_out_forgets_it(
    svc: Service, page: Page
) -> None:
    # Given a video half a day before its deletion and still not archived, and a lost one
    videos = Videos(svc.redis, prefix=svc.prefix)
    videos.register(manifest_entry("vid_late", age_days=29.5))
    lost = "deleted by the provider before it could be archived"
    videos.register(manifest_entry("vid_gone", age_days=31, state=VideoState.LOST, error=lost))
    token = svc.env["API_TOKEN"]
    page.goto(f"{svc.api}/#token={token}")
    page.locator("#nav").wait_for(state="visible")
    assert token not in page.url  # gone from the address bar (and it never reached the server)
    assert page.evaluate("sessionStorage.getItem('kling-chain.token')") == token
    page.click("a[data-nav=archive]")
    # Then the archive page makes the video at risk and the lost one stand out
    late_row = page.locator("tr[data-video=vid_late]")
    late_row.wait_for()
    assert late_row.get_attribute("class") == "row-at-risk"
    assert late_row.locator(".badge.at-risk").text_content() == "at risk"
    assert late_row.locator(".days-left").text_content() == "0.5"
    gone_row = page.locator("tr[data-video=vid_gone]")
    assert gone_row.get_attribute("class") == "row-lost"
    assert "deleted by the provider" in (gone_row.text_content() or "")
    page.click("#logout")
    page.locator("#login").wait_for(state="visible")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_wrong_token_is_refused_and_not_kept(svc: Service, page: Page) -> None:
    page.goto(f"{svc.api}/")
    page.fill("#token", "not-the-token")
    page.click("#login-form button[type=submit]")
    page.wait_for_function("() => document.getElementById('login-error').textContent !== ''")
    assert "refused" in (page.locator("#login-error").text_content() or "")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("#app").is_hidden()
