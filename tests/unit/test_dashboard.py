"""The dashboard's edges: the open page and its headers, signed file links, the step timeline."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import fakeredis
import pytest
import redis
from starlette.testclient import TestClient

from kling.models import Task, TaskStatus, Video
from webhook import app as webapp
from webhook import dashboard
from worker.core import tokens
from worker.core.chain import (
    Claim,
    Resume,
    Spec,
    StepStatus,
    SubmitFailed,
    Submitted,
    TaskUpdate,
    apply,
    new_chain,
)
from worker.core.videos import VideoRecord, VideoState
from worker.settings import Settings
from worker.state.videos import Videos

SECRET = "s" * 32
TOKEN = "api-token-" + "x" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BYTES = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def web(
    monkeypatch: pytest.MonkeyPatch, server: fakeredis.FakeServer, archive_dir: Path
) -> TestClient:
    """The web app on fakeredis with a local archive; no token sent unless a test adds it."""
    monkeypatch.setattr(redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis(server=server))
    settings = Settings(
        callback_secret=SECRET,
        kling_api_key="k",
        api_token=TOKEN,
        archive_dir=archive_dir,
    )
    return TestClient(webapp.create_app(settings, send_task=lambda *a, **k: None))


def record(video_id: str, state: VideoState, location: str | None = None) -> VideoRecord:
    return VideoRecord(
        video_id=video_id,
        task_id="t1",
        kind="video_extend",
        url=f"https://cdn.example/{video_id}.mp4",
        created_at=time.time() - 3600,
        known_at=time.time() - 3600,
        duration=9.5,
        state=state,
        location=location,
        bytes=len(BYTES) if location else None,
    )


def archived(server: fakeredis.FakeServer, archive_dir: Path, video_id: str = "vid_1") -> Path:
    """An archived video: its file in the archive and its record in Redis."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = archive_dir / f"{video_id}.mp4"
    path.write_bytes(BYTES)
    videos = Videos(fakeredis.FakeRedis(server=server), prefix="kc:")
    assert videos.register(record(video_id, VideoState.ARCHIVED, str(path)))
    return path


# -- the page ------------------------------------------------------------------------------------
def test_the_page_is_served_without_the_token_with_strict_security_headers(
    web: TestClient,
) -> None:
    reply = web.get("/")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/html")
    policy = reply.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in reply.headers
    # every script is a file of ours (the policy would refuse an inline one anyway)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", reply.text, flags=re.S)
    assert scripts
    assert all('src="/static/' in attrs and not body.strip() for attrs, body in scripts)
    assert TOKEN not in reply.text


@pytest.mark.parametrize(("name", "media"), [("app.js", "javascript"), ("style.css", "css")])
def test_the_assets_are_served_without_the_token(web: TestClient, name: str, media: str) -> None:
    reply = web.get(f"/static/{name}")
    assert reply.status_code == 200
    assert media in reply.headers["content-type"]
    assert reply.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/static/index.py", "/static/..%2Fapp.py", "/static/x"])
def test_nothing_else_is_served_from_the_static_directory(web: TestClient, path: str) -> None:
    assert web.get(path).status_code == 404


@pytest.mark.parametrize("path", ["/chains", "/archive", "/spend", "/archive/vid_1/url"])
def test_opening_the_page_opens_no_api_route(web: TestClient, path: str) -> None:
    assert web.get(path).status_code == 401


def test_the_page_sends_the_token_as_a_bearer_and_keeps_it_in_the_session_only() -> None:
    script = (Path(dashboard.STATIC) / "app.js").read_text()
    assert "sessionStorage" in script
    assert "Authorization: `Bearer ${token()}`" in script
    assert "localStorage" not in script
    assert "document.cookie" not in script
    assert 'credentials: "omit"' in script
    assert "innerHTML" not in script  # data from the API is only ever text


def test_the_static_files_are_package_data() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert re.search(r'webhook = \[.*"static/\*\.js"', pyproject)


# -- links to archived files ---------------------------------------------------------------------
def test_a_file_link_verifies_only_for_its_video_until_it_expires() -> None:
    key = SECRET.encode()
    sig = tokens.sign_file(key, "vid_1", 2000)
    assert tokens.verify_file(key, "vid_1", 2000, sig, now=1999)
    assert not tokens.verify_file(key, "vid_1", 2000, sig, now=2000)  # expired
    assert not tokens.verify_file(key, "vid_2", 2000, sig, now=1000)  # another video
    assert not tokens.verify_file(key, "vid_1", 3000, sig, now=1000)  # a longer life
    assert not tokens.verify_file(b"another-secret-another", "vid_1", 2000, sig, now=1000)
    assert sig != tokens.sign(key, "vid_1", 2000)  # not a callback token either


def test_an_archived_video_gets_a_short_lived_link_that_plays_with_byte_ranges(
    web: TestClient, server: fakeredis.FakeServer, archive_dir: Path
) -> None:
    archived(server, archive_dir)
    reply = web.get("/archive/vid_1/url", headers=AUTH)
    assert reply.status_code == 200, reply.text
    link = reply.json()
    assert link["url"].startswith("/files/vid_1?")
    assert 0 < link["expires_at"] - time.time() <= dashboard.LINK_SECONDS

    whole = web.get(link["url"])  # no bearer: the signature is the credential
    assert whole.status_code == 200
    assert whole.content == BYTES
    assert whole.headers["content-type"] == "video/mp4"
    part = web.get(link["url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == BYTES[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(BYTES)}"


def test_a_forged_altered_or_expired_link_is_refused(
    web: TestClient, server: fakeredis.FakeServer, archive_dir: Path
) -> None:
    archived(server, archive_dir, "vid_1")
    archived(server, archive_dir, "vid_2")
    url = web.get("/archive/vid_1/url", headers=AUTH).json()["url"]
    query = parse_qs(urlsplit(url).query)
    expires, sig = query["expires"][0], query["sig"][0]
    past = int(time.time()) - 1
    for bad in [
        f"/files/vid_2?expires={expires}&sig={sig}",  # another video
        f"/files/vid_1?expires={int(expires) + 3600}&sig={sig}",  # a longer life
        f"/files/vid_1?expires={expires}&sig={'A' * len(sig)}",
        f"/files/vid_1?expires={past}&sig={tokens.sign_file(SECRET.encode(), 'vid_1', past)}",
        f"/files/vid_1?expires=soon&sig={sig}",
        "/files/vid_1",
    ]:
        reply = web.get(bad)
        assert reply.status_code == 403, bad
        assert "ask" in reply.json()["error"]


def test_only_an_archived_video_has_a_link(
    web: TestClient, server: fakeredis.FakeServer, archive_dir: Path
) -> None:
    videos = Videos(fakeredis.FakeRedis(server=server), prefix="kc:")
    videos.register(record("vid_p", VideoState.PENDING))
    videos.register(record("vid_l", VideoState.LOST))
    unknown = web.get("/archive/nope/url", headers=AUTH)
    assert unknown.status_code == 404
    assert "no video 'nope'" in unknown.json()["error"]
    for video_id, state in [("vid_p", "pending"), ("vid_l", "lost")]:
        reply = web.get(f"/archive/{video_id}/url", headers=AUTH)
        assert reply.status_code == 404
        assert f"is {state}, not archived" in reply.json()["error"]


def test_a_link_serves_only_the_file_in_the_archive_directory(
    web: TestClient, server: fakeredis.FakeServer, archive_dir: Path, tmp_path: Path
) -> None:
    # a record whose location points elsewhere (moved archive, tampered record) serves nothing
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(BYTES)
    Videos(fakeredis.FakeRedis(server=server), prefix="kc:").register(
        record("vid_x", VideoState.ARCHIVED, str(elsewhere))
    )
    expires = int(time.time()) + 60
    sig = tokens.sign_file(SECRET.encode(), "vid_x", expires)
    assert web.get(f"/files/vid_x?expires={expires}&sig={sig}").status_code == 404


def test_with_s3_storage_the_link_is_a_presigned_get_of_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    settings = Settings(
        callback_secret=SECRET,
        api_token=TOKEN,
        archive_url="s3://media/kc",
        s3_endpoint_url="http://s3.internal:9000",
    )
    board = dashboard.Dashboard(
        settings,
        Videos(fakeredis.FakeRedis(), prefix="kc:"),
        SECRET.encode(),
    )
    url = board._presigned("s3://media/kc/vid_1.mp4")  # signed here: no request is sent
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("s3.internal:9000", "/media/kc/vid_1.mp4")
    query = parse_qs(parts.query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == [str(dashboard.LINK_SECONDS)]
    assert query["X-Amz-Credential"][0].startswith("AKIAEXAMPLE/")
    assert "media-src 'self' http://s3.internal:9000" in board.headers["Content-Security-Policy"]


# -- the step timeline ---------------------------------------------------------------------------
def reply(status: TaskStatus, **extra: Any) -> Task:
    videos = (Video("v1", "https://cdn.example/v1.mp4", 10.0),)
    return Task(
        "t0", status, created_at_ms=1, videos=videos if status is TaskStatus.SUCCEED else ()
    )


def test_each_step_shows_when_it_was_submitted_processing_and_done() -> None:
    spec = Spec(video_id="v0", task_id="p0", source_duration=5.0, target_seconds=30.0)
    c = new_chain("c1", spec, 100.0)
    c = apply(c, Claim(0, "w1", 60.0), 101.0).chain
    c = apply(c, Submitted(0, reply(TaskStatus.SUBMITTED)), 102.0).chain
    c = apply(c, TaskUpdate(0, reply(TaskStatus.PROCESSING)), 105.0).chain
    c = apply(c, TaskUpdate(0, reply(TaskStatus.PROCESSING)), 107.0).chain  # no new stage
    c = apply(c, TaskUpdate(0, reply(TaskStatus.SUCCEED)), 110.0).chain
    step = c.view({})["steps"][0]
    assert (step["first_try_at"], step["submitted_at"]) == (101.0, 102.0)
    assert (step["processing_at"], step["ended_at"]) == (105.0, 110.0)
    assert c.view({})["steps"][1]["submitted_at"] is None  # the next one, not sent yet


def test_a_resumed_step_is_no_longer_shown_as_ended() -> None:
    spec = Spec(video_id="v0", task_id="p0", source_duration=5.0, steps=2)
    c = apply(new_chain("c1", spec, 100.0), Claim(0, "w1", 60.0), 101.0).chain
    c = apply(c, SubmitFailed(0, "account in arrears", 1101), 102.0).chain
    assert c.steps[0].ended_at == 102.0
    resumed = apply(c, Resume(), 200.0).chain
    fresh = [s for s in resumed.steps if s.status is StepStatus.PENDING]
    assert fresh
    assert all(s.ended_at is None for s in fresh)


def test_a_chain_stored_before_the_timeline_still_loads() -> None:
    c = new_chain("c1", Spec(video_id="v0", steps=1), 100.0)
    doc = c.to_json().replace(',"submitted_at":null,"processing_at":null,"ended_at":null', "")
    assert "submitted_at" not in doc
    loaded = type(c).from_json(doc)
    assert loaded.steps[0].ended_at is None
    assert loaded == c
