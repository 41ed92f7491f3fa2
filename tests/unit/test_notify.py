"""Outbound notifications: the signature scheme, the payload, ids and reply handling.

The signature is checked against the test vector published with Standard Webhooks (the
reference Python library's ``test_sign_function``, and the other libraries' tests): the same
secret, id, timestamp and body must give exactly the published signature, or receivers
using any Standard Webhooks library would reject every delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any, Self

import pytest
import standardwebhooks.webhooks

from worker.outbound.notify import (
    DeliveryFailed,
    DeliveryRejected,
    Event,
    EventType,
    WebhookVerificationError,
    check_url,
    deliver,
    delivery_error,
    event_id,
    new_event,
    parse_retry_after,
    parse_secret,
    sign_headers,
    verify,
)

# The Standard Webhooks test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_TIME = datetime.fromtimestamp(VECTOR_TIMESTAMP, UTC)

OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


class VectorEvent(Event):
    """An event whose body is the specification's test payload instead of our own shape."""

    def payload(self) -> str:
        return VECTOR_PAYLOAD


def vector_event() -> Event:
    return VectorEvent(id=VECTOR_ID, type=EventType.CHAIN_SUCCEEDED, timestamp=WHEN, data={})


def hmac_signature(secret: str, msg_id: str, timestamp: int, payload: str) -> str:
    """The scheme written out from the specification, independently of the package."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{payload}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's verify() reads its clock through its module's `datetime`: pin it."""

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Self:
            return cls.fromtimestamp(VECTOR_TIMESTAMP, tz)

    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", FrozenDatetime)


def event(**data: Any) -> Event:
    return new_event(EventType.VIDEO_ARCHIVED, data, now=WHEN, event_id="evt_v1_archived")


# --- the signature -------------------------------------------------------------------------


def test_the_published_vector_follows_the_specified_scheme() -> None:
    assert (
        hmac_signature(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD)
        == VECTOR_SIGNATURE
    )


def test_sign_headers_reproduces_the_published_vector_exactly() -> None:
    headers = sign_headers(VECTOR_SECRET, vector_event(), now=VECTOR_TIME)

    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": VECTOR_SIGNATURE,
        "content-type": "application/json",
    }


def test_the_timestamp_is_the_attempt_time_in_any_zone_not_the_event_time() -> None:
    # The package's sign() replaces the zone instead of converting: +02:00 must still work.
    in_paris = VECTOR_TIME.astimezone(timezone(timedelta(hours=2)))
    later = VECTOR_TIME + timedelta(seconds=0.999)

    assert sign_headers(VECTOR_SECRET, vector_event(), now=in_paris)["webhook-signature"] == (
        VECTOR_SIGNATURE
    )
    assert sign_headers(VECTOR_SECRET, vector_event(), now=later)["webhook-timestamp"] == (
        "1614265330"
    )


def test_sign_headers_rejects_a_naive_time() -> None:
    with pytest.raises(ValueError, match="time zone"):
        sign_headers(VECTOR_SECRET, vector_event(), now=datetime(2024, 1, 1))


def test_our_events_are_signed_over_their_exact_body() -> None:
    e = event(video_id="v1", path="/srv/archive/v1.mp4")

    headers = sign_headers(OTHER_SECRET, e, now=WHEN)

    seconds = int(WHEN.timestamp())
    assert headers["webhook-timestamp"] == str(seconds)
    assert headers["webhook-signature"] == hmac_signature(
        OTHER_SECRET, "evt_v1_archived", seconds, e.payload()
    )


def test_each_attempt_is_signed_anew_with_the_same_id() -> None:
    e = event(video_id="v1")

    first = sign_headers(OTHER_SECRET, e, now=WHEN)
    retry = sign_headers(OTHER_SECRET, e, now=WHEN + timedelta(minutes=10))

    assert first["webhook-id"] == retry["webhook-id"] == "evt_v1_archived"
    assert first["webhook-timestamp"] != retry["webhook-timestamp"]
    assert first["webhook-signature"] != retry["webhook-signature"]


# --- verify --------------------------------------------------------------------------------


def vector_headers(**changes: str) -> dict[str, str]:
    return {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    } | changes


@pytest.mark.usefixtures("frozen_clock")
def test_verify_accepts_the_published_vector_and_returns_the_body() -> None:
    assert verify(VECTOR_SECRET, VECTOR_PAYLOAD, vector_headers()) == {"test": 2432232314}
    assert verify(VECTOR_SECRET, VECTOR_PAYLOAD.encode(), vector_headers()) == {"test": 2432232314}


@pytest.mark.usefixtures("frozen_clock")
def test_verify_accepts_one_good_signature_among_several() -> None:
    rotated = f"v1,{base64.b64encode(b'x' * 32).decode()} {VECTOR_SIGNATURE}"

    assert verify(VECTOR_SECRET, VECTOR_PAYLOAD, vector_headers(**{"webhook-signature": rotated}))


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize(
    ("secret", "payload", "headers"),
    [
        pytest.param(VECTOR_SECRET, '{"test": 2432232315}', vector_headers(), id="tampered"),
        pytest.param(VECTOR_SECRET, '{"test":2432232314}', vector_headers(), id="reformatted"),
        pytest.param(OTHER_SECRET, VECTOR_PAYLOAD, vector_headers(), id="wrong-secret"),
        pytest.param(
            VECTOR_SECRET,
            VECTOR_PAYLOAD,
            vector_headers(**{"webhook-id": "msg_other"}),
            id="other-id",
        ),
        pytest.param(
            VECTOR_SECRET,
            VECTOR_PAYLOAD,
            vector_headers(**{"webhook-timestamp": str(VECTOR_TIMESTAMP - 301)}),
            id="stale",
        ),
        pytest.param(
            VECTOR_SECRET,
            VECTOR_PAYLOAD,
            vector_headers(**{"webhook-timestamp": str(VECTOR_TIMESTAMP + 301)}),
            id="future",
        ),
        pytest.param(
            VECTOR_SECRET,
            VECTOR_PAYLOAD,
            {k: v for k, v in vector_headers().items() if k != "webhook-signature"},
            id="unsigned",
        ),
        pytest.param(
            VECTOR_SECRET,
            VECTOR_PAYLOAD,
            vector_headers(**{"webhook-signature": "garbage"}),
            id="malformed-signature",
        ),
        pytest.param(
            VECTOR_SECRET,
            VECTOR_PAYLOAD,
            vector_headers(**{"webhook-signature": "v1,not base64!"}),
            id="signature-not-base64",
        ),
        pytest.param(
            VECTOR_SECRET,
            VECTOR_PAYLOAD,
            vector_headers(**{"webhook-signature": VECTOR_SIGNATURE.replace("v1,", "v2,")}),
            id="unknown-version",
        ),
    ],
)
def test_verify_rejects(secret: str, payload: str, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookVerificationError):
        verify(secret, payload, headers)


def test_verify_rejects_the_vector_today_because_it_is_stale() -> None:
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(VECTOR_SECRET, VECTOR_PAYLOAD, vector_headers())


def test_verify_accepts_what_sign_headers_makes_now_with_any_header_case() -> None:
    e = event(video_id="v1", note="café ☕")
    headers = {k.title(): v for k, v in sign_headers(OTHER_SECRET, e).items()}

    assert verify(OTHER_SECRET, e.payload().encode(), headers) == json.loads(e.payload())


# --- secrets -------------------------------------------------------------------------------


def test_parse_secret_returns_the_key() -> None:
    assert parse_secret(OTHER_SECRET) == bytes(range(32))
    assert len(parse_secret(VECTOR_SECRET)) == 24


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id="no-prefix"),
        pytest.param("whsec_", id="empty"),
        pytest.param("whsec_c2hvcnQ=", id="too-short"),
        pytest.param("whsec_" + base64.b64encode(b"k" * 65).decode(), id="too-long"),
        pytest.param("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa-w", id="urlsafe-alphabet"),
        pytest.param("whsec_MfKQ9r8GKYqrTwjU PD8ILPZIo2LaLaSw", id="space"),
        pytest.param("hunter2hunter2hunter2", id="a-password"),
    ],
)
def test_parse_secret_rejects_without_revealing(secret: str) -> None:
    with pytest.raises(ValueError, match=r"secret|base64") as caught:
        parse_secret(secret)
    body = secret.removeprefix("whsec_")
    if body:
        assert body not in str(caught.value)


def test_signing_with_a_bad_secret_fails_before_any_network() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        deliver("http://127.0.0.1:9/hook", "not-a-secret", event())


# --- events and payloads -------------------------------------------------------------------


def test_event_types_are_the_documented_names() -> None:
    assert [t.value for t in EventType] == [
        "chain.step_succeeded",
        "chain.succeeded",
        "chain.failed",
        "chain.cancelled",
        "video.archived",
        "video.at_risk",
        "video.lost",
    ]


def test_payload_is_compact_json_in_a_fixed_order() -> None:
    e = new_event(
        EventType.CHAIN_SUCCEEDED,
        {"steps": [{"z": 1, "a": 2}], "chain_id": "c1", "duration": 31.9},
        now=datetime(2024, 1, 2, 5, 4, 5, 6000, tzinfo=timezone(timedelta(hours=2))),
        event_id="evt_c1_end",
    )

    assert e.payload() == (
        '{"type":"chain.succeeded","timestamp":"2024-01-02T03:04:05.006000Z",'
        '"data":{"chain_id":"c1","duration":31.9,"steps":[{"a":2,"z":1}]}}'
    )


def test_payload_does_not_depend_on_insertion_order_and_is_ascii() -> None:
    one = event(a=1, b={"y": "é", "x": None})
    two = event(b={"x": None, "y": "é"}, a=1)

    assert one.payload() == two.payload()
    assert one.payload().isascii()
    assert json.loads(one.payload())["data"] == {"a": 1, "b": {"x": None, "y": "é"}}


def test_event_holds_a_copy_of_its_data() -> None:
    data: dict[str, Any] = {"items": [1]}
    e = new_event(EventType.VIDEO_LOST, data, now=WHEN)

    data["items"].append(2)

    assert json.loads(e.payload())["data"] == {"items": [1]}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"x": float("nan")}, id="nan"),
        pytest.param({"x": {1, 2}}, id="set"),
        pytest.param({"x": object()}, id="object"),
        pytest.param({"x": WHEN}, id="datetime"),
    ],
)
def test_data_that_is_not_json_is_refused_when_the_event_is_made(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="JSON"):
        new_event(EventType.VIDEO_LOST, data, now=WHEN)


def test_new_event_defaults_to_a_random_id_and_the_current_time() -> None:
    before = datetime.now(UTC)
    a = new_event(EventType.VIDEO_AT_RISK, {"video_id": "v1"})
    b = new_event(EventType.VIDEO_AT_RISK, {"video_id": "v1"})

    assert re.fullmatch(r"evt_[0-9a-f]{24}", a.id)
    assert a.id != b.id
    assert before <= a.timestamp <= datetime.now(UTC)
    assert a.timestamp.tzinfo is UTC


def test_a_given_id_makes_redelivery_identical() -> None:
    a = new_event(EventType.CHAIN_FAILED, {"chain_id": "c1"}, now=WHEN, event_id="evt_c1_end")
    b = new_event(EventType.CHAIN_FAILED, {"chain_id": "c1"}, now=WHEN, event_id="evt_c1_end")

    assert a == b
    assert sign_headers(OTHER_SECRET, a, now=WHEN) == sign_headers(OTHER_SECRET, b, now=WHEN)


def test_new_event_rejects_a_naive_time() -> None:
    with pytest.raises(ValueError, match="time zone"):
        new_event(EventType.CHAIN_FAILED, {}, now=datetime(2024, 1, 1))


@pytest.mark.parametrize(
    "bad_id", ["", "evt_a.b", "evt a", "evt_\u00e9", "evt_\n", "x" * 201, "evt_a/b"]
)
def test_ids_that_could_break_the_signed_content_or_a_header_are_refused(bad_id: str) -> None:
    with pytest.raises(ValueError, match="event id"):
        new_event(EventType.CHAIN_FAILED, {}, now=WHEN, event_id=bad_id)


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ValueError, match=r"chain\.paused"):
        Event(id="evt_1", type="chain.paused", timestamp=WHEN, data={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("c1", "end"), "evt_c1_end"),
        (("vid_bNd6X0", "archived"), "evt_vid_bNd6X0_archived"),
        (("c1", 3, "at-risk"), "evt_c1_3_at-risk"),
    ],
)
def test_event_id_joins_safe_parts(parts: tuple[str | int, ...], expected: str) -> None:
    assert event_id(*parts) == expected


def test_event_id_digests_parts_an_id_cannot_hold() -> None:
    dotted = event_id("vid.1", "archived")

    assert re.fullmatch(r"evt_[0-9a-f]{40}", dotted)
    assert dotted == event_id("vid.1", "archived")
    assert dotted != event_id("vid.2", "archived")
    assert re.fullmatch(r"evt_[0-9a-f]{40}", event_id("x" * 300))
    new_event(EventType.VIDEO_ARCHIVED, {}, now=WHEN, event_id=dotted)  # accepted
    with pytest.raises(ValueError, match="part"):
        event_id()


def test_an_event_survives_a_json_queue() -> None:
    e = new_event(EventType.VIDEO_ARCHIVED, {"video_id": "v1", "bytes": 1820000, "ok": True})

    back = Event.from_dict(json.loads(json.dumps(e.to_dict())))

    assert back == e
    assert back.payload() == e.payload()


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"id": "evt_1", "type": "chain.paused", "timestamp": "2024-01-01T00:00:00Z", "data": {}},
        {"id": "evt_1", "type": "chain.failed", "timestamp": "yesterday", "data": {}},
        {"id": "evt_1", "type": "chain.failed", "timestamp": "2024-01-01T00:00:00", "data": {}},
        {"id": "evt_1", "type": "chain.failed", "timestamp": 1, "data": {}},
    ],
)
def test_from_dict_refuses_what_is_not_an_event(value: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the fault
        Event.from_dict(value)


# --- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert delivery_error(status) is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408, 429, 301, 302, 307, 308, 100])
def test_retryable_statuses(status: int) -> None:
    assert isinstance(delivery_error(status), DeliveryFailed)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413, 422, 499])
def test_permanent_statuses(status: int) -> None:
    error = delivery_error(status)
    assert isinstance(error, DeliveryRejected)
    assert str(status) in str(error)


def test_retry_after_travels_with_the_failure() -> None:
    error = delivery_error(429, "7")
    assert isinstance(error, DeliveryFailed)
    assert error.retry_after == 7.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Mon, 06 May 2024 07:09:09 GMT", 60.0 - 0.123456),
        ("Mon, 06 May 2024 07:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=WHEN) == (
        pytest.approx(expected) if expected is not None else None
    )


# --- URLs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hook", "https://example.com/a?b=c", "HTTPS://Example.com"]
)
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "example.com/hook",
        "//example.com/hook",
        "http:///hook",
        "https://example.com:99999/hook",
        "javascript:alert(1)",
        "",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="notification URL"):
        check_url(url)


def test_deliver_refuses_a_bad_url_before_any_network() -> None:
    with pytest.raises(ValueError, match="http or https"):
        deliver("ftp://127.0.0.1/hook", VECTOR_SECRET, event())


def test_url_errors_do_not_echo_credentials_or_query() -> None:
    with pytest.raises(ValueError, match="notification URL") as caught:
        check_url("ftp://user:pa55@example.com/hook?token=abc")
    assert "pa55" not in str(caught.value)
    assert "abc" not in str(caught.value)
