"""Signed provider callbacks (``KLING_WEBHOOK_SECRET``): checked before anything else is done,
taken once per ``webhook-id``, and refused (401, nothing enqueued) when not valid and recent."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis
from kombu.exceptions import OperationalError
from starlette.testclient import TestClient

from kling.fake.callbacks import CallbackSender
from kling.fake.config import FakeConfig
from kling.fake.engine import Engine
from kling.fake.faults import Faults, FaultsError
from kling.fake.server import build_parser, config_from_args
from kling.signing import TOLERANCE_SECONDS, Refusal, SignatureError, sign_headers, verify
from webhook import app as webapp
from webhook.signed import SignedCallbacks
from worker.core import tokens
from worker.settings import ConfigError, Settings
from worker.state.deliveries import DELIVERY_TTL
from worker.tasknames import IMPORT_TASK, REFRESH_STEP

CALLBACK_SECRET = "s" * 32  # the unit conftest's
KEY = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_KEY = "whsec_" + base64.b64encode(b"o" * 32).decode()
TOKEN = "api-token-" + "x" * 32

BODY = json.dumps(
    {"task_id": "t1", "task_status": "succeed", "created_at": 1, "updated_at": 2}
).encode()

Sent = list[tuple[str, tuple[Any, ...]]]


@pytest.fixture
def web_settings() -> dict[str, Any]:
    return {"kling_webhook_secret": KEY}


def path(chain_id: str = "c1", index: int = 0) -> str:
    return f"/callbacks/{chain_id}/{index}/{tokens.sign(CALLBACK_SECRET.encode(), chain_id, index)}"


def archive_path(kind: str = "video-extend") -> str:
    return f"/callbacks/archive/{kind}/{tokens.sign_archive(CALLBACK_SECRET.encode(), kind)}"


def signed(
    body: bytes = BODY, *, msg_id: str = "msg_1", key: str = KEY, at: float | None = None
) -> dict[str, str]:
    return {
        **sign_headers(key, msg_id, body, now=time.time() if at is None else at),
        "content-type": "application/json",
    }


def post(client: TestClient, headers: dict[str, str], body: bytes = BODY, to: str = "") -> Any:
    return client.post(to or path(), content=body, headers=headers)


def webhook_keys() -> list[bytes]:
    """The dedupe keys in the fixture's fakeredis (``from_url`` is patched to reach it)."""
    client = redis.Redis.from_url("redis://fixture")
    return list(client.scan_iter(match="*webhook-id:*"))


# -- accepted ----------------------------------------------------------------------------------
def test_a_validly_signed_callback_is_queued(client: TestClient, sent: Sent) -> None:
    reply = post(client, signed())
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"ok": True}
    assert sent == [(REFRESH_STEP, ("c1", 0, "t1", None, "succeed"))]


def test_an_enveloped_signed_callback_is_queued(client: TestClient, sent: Sent) -> None:
    body = json.dumps({"code": 0, "message": "SUCCEED", "data": json.loads(BODY)}).encode()
    assert post(client, signed(body), body).status_code == 200
    assert sent == [(REFRESH_STEP, ("c1", 0, "t1", None, "succeed"))]


@pytest.mark.parametrize(
    "arrange",
    [
        "{wrong} {good}",
        "{good} {wrong}",
        "{wrong}  {wrong2}\t{good}",  # stray whitespace between entries
        "v1a,c2lnbmVk {good}",  # another scheme's entry first
        "garbage {good}",  # an entry with no version
        "v1,not*base64! {good}",
    ],
)
def test_during_a_rotation_any_one_matching_signature_is_valid(
    client: TestClient, sent: Sent, arrange: str
) -> None:
    headers = signed()
    good = headers["webhook-signature"]
    wrong = signed(key=OTHER_KEY)["webhook-signature"]
    wrong2 = signed(msg_id="msg_other")["webhook-signature"]
    headers["webhook-signature"] = arrange.format(good=good, wrong=wrong, wrong2=wrong2)
    reply = post(client, headers)
    assert reply.status_code == 200, reply.text
    assert len(sent) == 1


def test_a_timestamp_just_inside_five_minutes_is_accepted(client: TestClient, sent: Sent) -> None:
    assert post(client, signed(at=time.time() - TOLERANCE_SECONDS + 20)).status_code == 200
    assert post(client, signed(msg_id="m2", at=time.time() + TOLERANCE_SECONDS - 20)).is_success
    assert len(sent) == 2


# -- refused -----------------------------------------------------------------------------------
def refused(reply: Any, reason: str) -> None:
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"].startswith("invalid callback signature: ")
    assert reason in reply.json()["error"]


def test_a_callback_signed_with_another_secret_is_401(client: TestClient, sent: Sent) -> None:
    refused(post(client, signed(key=OTHER_KEY)), "no signature matches")
    assert sent == []


def test_a_changed_body_is_401(client: TestClient, sent: Sent) -> None:
    other = BODY.replace(b"succeed", b"failed")
    refused(post(client, signed(BODY), other), "no signature matches")
    assert sent == []


def test_a_changed_webhook_id_is_401(client: TestClient, sent: Sent) -> None:
    headers = signed()
    headers["webhook-id"] = "msg_2"
    refused(post(client, headers), "no signature matches")
    assert sent == []


@pytest.mark.parametrize("seconds", [TOLERANCE_SECONDS + 30, 3600, 86400 * 2])
def test_a_stale_signature_is_401(client: TestClient, sent: Sent, seconds: float) -> None:
    refused(post(client, signed(at=time.time() - seconds)), "ago (at most 300 s)")
    assert sent == []


@pytest.mark.parametrize("seconds", [TOLERANCE_SECONDS + 30, 86400])
def test_a_signature_from_the_future_is_401(client: TestClient, sent: Sent, seconds: float) -> None:
    refused(post(client, signed(at=time.time() + seconds)), "ahead of our clock")
    assert sent == []


@pytest.mark.parametrize(
    "missing",
    [
        ("webhook-id",),
        ("webhook-timestamp",),
        ("webhook-signature",),
        ("webhook-id", "webhook-timestamp", "webhook-signature"),  # a plain unsigned callback
    ],
)
def test_missing_headers_are_401(client: TestClient, sent: Sent, missing: tuple[str, ...]) -> None:
    headers = {k: v for k, v in signed().items() if k not in missing}
    refused(post(client, headers), f"the callback is not signed: no {', '.join(missing)}")
    assert sent == []


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("webhook-timestamp", "yesterday", "not unix seconds"),
        ("webhook-timestamp", "nan", "not unix seconds"),
        ("webhook-signature", "v1", "holds no v1,<base64> signature"),
        ("webhook-signature", "v2,c2lnbmVk", "holds no v1,<base64> signature"),
        ("webhook-signature", "v1,c2lnbmVk", "no signature matches"),
    ],
)
def test_malformed_headers_are_401_never_500(
    client: TestClient, sent: Sent, header: str, value: str, reason: str
) -> None:
    headers = signed()
    headers[header] = value
    refused(post(client, headers), reason)
    assert sent == []


def test_a_body_that_is_not_utf8_is_401_not_500(client: TestClient, sent: Sent) -> None:
    body = b'{"task_id": "t1", "task_status": "succeed", "x": "\xff"}'
    headers = signed(b"{}")
    refused(post(client, headers, body), "no signature matches")
    assert sent == []


def test_a_valid_signature_does_not_replace_the_url_token(client: TestClient, sent: Sent) -> None:
    reply = post(client, signed(), to="/callbacks/c1/0/" + "A" * 32)
    assert reply.status_code == 403
    assert sent == []


def test_refusals_never_reach_the_dedupe_keys_or_the_queue(
    client: TestClient, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(
        "worker.state.deliveries.Deliveries.first", lambda self, msg_id: asked.append(msg_id)
    )
    for n in range(20):  # a storm of forgeries
        assert post(client, signed(msg_id=f"m{n}", key=OTHER_KEY)).status_code == 401
    assert post(client, signed(at=time.time() - 3600)).status_code == 401
    assert (asked, sent, webhook_keys()) == ([], [], [])


def test_refusals_are_counted_and_logged_without_the_token(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="webhook.signed")
    for n in range(5):
        post(client, signed(msg_id=f"m{n}", key=OTHER_KEY))
    post(client, signed(at=time.time() - 3600))
    metrics = client.get("/metrics").text
    assert 'kc_callbacks_refused_total{reason="mismatch"} 5' in metrics
    assert 'kc_callbacks_refused_total{reason="stale"} 1' in metrics
    assert 'kc_callbacks_refused_total{reason="future"} 0' in metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one per reason; the rest wait for the next report
    token = path().rsplit("/", 1)[1]
    assert all("/callbacks/c1/0/<token>" in w and token not in w for w in warnings)


def test_a_storm_is_reported_with_its_count_once_the_quiet_period_is_over() -> None:
    clock = [0.0]
    checker = SignedCallbacks(KEY, deliveries=None, clock=lambda: clock[0])  # type: ignore[arg-type]
    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Catch()
    logging.getLogger("webhook.signed").addHandler(handler)
    try:
        for second in range(25):
            clock[0] = float(second)
            with pytest.raises(Exception, match="invalid callback signature"):
                checker.verify(BODY, signed(key=OTHER_KEY), where="/callbacks/x")
    finally:
        logging.getLogger("webhook.signed").removeHandler(handler)
    assert [r.split(" ")[1] for r in records] == ["1", "10", "10"]
    assert checker.refused[Refusal.MISMATCH] == 25


# -- dedupe ------------------------------------------------------------------------------------
def test_a_repeated_delivery_is_200_and_enqueued_once(
    client: TestClient, sent: Sent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook.app")
    first = post(client, signed(msg_id="msg_a"))
    again = [post(client, signed(msg_id="msg_a")) for _ in range(5)]  # re-signed, same id
    assert first.json() == {"ok": True}
    assert {r.status_code for r in again} == {200}
    assert all(r.json() == {"ok": True, "duplicate": True} for r in again)
    assert sent == [(REFRESH_STEP, ("c1", 0, "t1", None, "succeed"))]
    # each delivery has its line, as its access line is left out (a 2xx callback)
    lines = [r for r in caplog.records if getattr(r, "event", None) == "callback.received"]
    assert len(lines) == 6
    assert sum("a repeat delivery" in r.getMessage() for r in lines) == 5


def test_different_messages_are_each_enqueued(client: TestClient, sent: Sent) -> None:
    for msg_id in ("msg_a", "msg_b", "msg_c"):
        assert post(client, signed(msg_id=msg_id)).json() == {"ok": True}
    assert len(sent) == 3


def test_a_webhook_id_is_remembered_for_a_day_and_then_forgotten(client: TestClient) -> None:
    post(client, signed(msg_id="msg_a"))
    keys = webhook_keys()
    assert len(keys) == 1
    ttl = redis.Redis.from_url("redis://fixture").ttl(keys[0])
    assert DELIVERY_TTL - 5 <= ttl <= DELIVERY_TTL == 24 * 3600


def test_a_refused_repeat_of_a_taken_id_is_still_refused(client: TestClient, sent: Sent) -> None:
    post(client, signed(msg_id="msg_a"))
    refused(post(client, signed(msg_id="msg_a", key=OTHER_KEY)), "no signature matches")
    assert len(sent) == 1


def test_a_delivery_whose_enqueue_failed_is_acted_on_when_it_comes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis(server=server))
    sent: Sent = []
    broker_down = [True]

    def send_task(name: str, args: tuple[Any, ...]) -> None:
        if broker_down[0]:
            raise OperationalError("broker unreachable")
        sent.append((name, tuple(args)))

    settings = Settings(
        callback_secret=CALLBACK_SECRET,
        kling_api_key="k",
        api_token=TOKEN,
        kling_webhook_secret=KEY,
    )
    client = TestClient(webapp.create_app(settings, send_task=send_task))
    assert post(client, signed(msg_id="msg_a")).status_code == 503
    broker_down[0] = False
    reply = post(client, signed(msg_id="msg_a"))  # the provider's redelivery
    assert reply.json() == {"ok": True}
    assert post(client, signed(msg_id="msg_a")).json() == {"ok": True, "duplicate": True}
    assert sent == [(REFRESH_STEP, ("c1", 0, "t1", None, "succeed"))]


# -- the account-wide archive route ------------------------------------------------------------
def test_archive_callbacks_are_signed_checked_and_deduplicated(
    client: TestClient, sent: Sent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook.app")
    refused(post(client, {"content-type": "application/json"}, to=archive_path()), "not signed")
    refused(post(client, signed(key=OTHER_KEY), to=archive_path()), "no signature matches")
    assert sent == []
    reply = post(client, signed(msg_id="msg_z"), to=archive_path())
    assert reply.json() == {"ok": True, "queued": True}
    again = post(client, signed(msg_id="msg_z"), to=archive_path())
    assert again.json() == {"ok": True, "queued": False, "duplicate": True}
    assert sent == [(IMPORT_TASK, ("video-extend", "t1", "callback"))]
    lines = [r for r in caplog.records if getattr(r, "event", None) == "callback.archive"]
    assert ["a repeat delivery" in r.getMessage() for r in lines] == [False, True]


# -- without a secret --------------------------------------------------------------------------
class TestUnset:
    @pytest.fixture
    def web_settings(self) -> dict[str, Any]:
        return {}

    def test_unsigned_callbacks_are_taken_on_their_url_token(
        self, client: TestClient, sent: Sent
    ) -> None:
        assert post(client, {"content-type": "application/json"}).json() == {"ok": True}
        assert len(sent) == 1

    def test_signature_headers_are_ignored_and_nothing_is_deduplicated(
        self, client: TestClient, sent: Sent
    ) -> None:
        for _ in range(2):
            assert post(client, signed(msg_id="msg_a", key=OTHER_KEY)).json() == {"ok": True}
        assert len(sent) == 2
        assert webhook_keys() == []


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("k" * 40, "whsec_<base64>"),
        ("whsec_!!!not-base64!!!", "standard base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
    ],
)
def test_a_malformed_secret_stops_the_web_process_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], secret: str, problem: str
) -> None:
    monkeypatch.setattr(redis.Redis, "from_url", lambda *a, **k: fakeredis.FakeRedis())
    settings = Settings(
        callback_secret=CALLBACK_SECRET,
        kling_api_key="k",
        api_token=TOKEN,
        kling_webhook_secret=secret,
    )
    with pytest.raises(SystemExit) as exited:
        webapp.create_app(settings, send_task=lambda *a, **k: None)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "KLING_WEBHOOK_SECRET" in err
    assert problem in err
    assert secret not in err


def test_the_secret_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KLING_WEBHOOK_SECRET", KEY)
    assert Settings().kling_webhook_key() == KEY
    monkeypatch.setenv("KLING_WEBHOOK_SECRET", "  ")
    assert Settings().kling_webhook_key() is None  # blank, as compose's ${VAR:-} gives: unset
    monkeypatch.setenv("KLING_WEBHOOK_SECRET", "whsec_")
    with pytest.raises(ConfigError, match="KLING_WEBHOOK_SECRET"):
        Settings().kling_webhook_key()
    assert KEY not in repr(Settings(kling_webhook_secret=KEY))


# -- kling.signing, the pure check ---------------------------------------------------------------
def test_verify_returns_the_webhook_id_of_a_valid_signature() -> None:
    assert verify(KEY, BODY, signed(msg_id="msg_q")) == "msg_q"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (dict, Refusal.MISSING),
        (
            lambda: {"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": " "},
            Refusal.MISSING,
        ),
        (lambda: signed(key=OTHER_KEY), Refusal.MISMATCH),
        (lambda: signed(at=time.time() - 1000), Refusal.STALE),
        (lambda: signed(at=time.time() + 1000), Refusal.FUTURE),
        (lambda: {**signed(), "webhook-timestamp": "soon"}, Refusal.MALFORMED),
        (lambda: {**signed(), "webhook-signature": "v1a,abc"}, Refusal.MALFORMED),
    ],
    ids=["none", "blank", "mismatch", "stale", "future", "bad-time", "bad-signature"],
)
def test_verify_names_why_it_refused(
    headers: Callable[[], dict[str, str]], reason: Refusal
) -> None:
    # Signed when the test runs, not when it is collected: a long suite would make them stale.
    with pytest.raises(SignatureError) as refused_:
        verify(KEY, BODY, headers())
    assert refused_.value.reason == reason


def test_sign_headers_match_the_standard_webhooks_scheme() -> None:
    import hashlib
    import hmac

    headers = sign_headers(KEY, "msg_1", b'{"a":1}', now=1_700_000_000.7)
    assert headers["webhook-timestamp"] == "1700000000"
    raw = base64.b64decode(KEY.removeprefix("whsec_"))
    expected = hmac.new(raw, b'msg_1.1700000000.{"a":1}', hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(expected).decode()


# -- the fake gateway signs as the official API does ---------------------------------------------
def fake_sender(mode: str, secret: str | None = KEY) -> CallbackSender:
    engine = Engine(faults=Faults().merged({"callback_signatures": mode}))
    return CallbackSender(engine, webhook_secret=secret)


def test_the_fake_gateway_signs_so_that_the_service_accepts() -> None:
    for mode in ("valid", "rotated"):
        headers = fake_sender(mode).signature_headers("msg_f", BODY)
        assert verify(KEY, BODY, headers) == "msg_f"
    rotated = fake_sender("rotated").signature_headers("msg_f", BODY)["webhook-signature"]
    assert len(rotated.split(" ")) == 2


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("none", Refusal.MISSING), ("wrong", Refusal.MISMATCH), ("stale", Refusal.STALE)],
)
def test_the_fake_gateway_spoils_signatures_on_demand(mode: str, reason: Refusal) -> None:
    headers = fake_sender(mode).signature_headers("msg_f", BODY)
    with pytest.raises(SignatureError) as refused_:
        verify(KEY, BODY, headers)
    assert refused_.value.reason == reason


def test_without_a_secret_the_fake_gateway_does_not_sign() -> None:
    assert fake_sender("valid", secret=None).signature_headers("msg_f", BODY) == {}


def test_the_fake_gateway_checks_its_secret_and_knob() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        FakeConfig(webhook_secret="not-a-secret")
    with pytest.raises(FaultsError, match="callback_signatures"):
        Faults().merged({"callback_signatures": "sometimes"})
    assert KEY not in repr(FakeConfig(webhook_secret=KEY))
    args = build_parser().parse_args(["--webhook-secret", KEY])
    assert config_from_args(args, {}).webhook_secret == KEY
    from_env = config_from_args(build_parser().parse_args([]), {"KLING_WEBHOOK_SECRET": KEY})
    assert from_env.webhook_secret == KEY
