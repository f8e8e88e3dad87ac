"""The retry policy without a server: which errors are retried, how long, and a prompt stop."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from importer.errors import AmbiguousResponse, AuthError, TransientError
from importer.servicenow import ClientSettings, InstanceClient
from importer.servicenow.retry import RetryPolicy, call_with_retries
from tests.waiting import wait_until

FAST = RetryPolicy(attempts=4, backoff_s=0.01, backoff_max_s=0.02)


class Flaky:
    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_errors_are_retried_and_reported() -> None:
    seen: list[tuple[str, int | None]] = []
    attempt = Flaky(
        TransientError("busy", status=503, reason="503"), TransientError("down", reason="connection")
    )
    result = call_with_retries(attempt, policy=FAST, what="test", on_retry=lambda r, s: seen.append((r, s)))
    assert result == "ok"
    assert attempt.calls == 3
    assert seen == [("503", 503), ("connection", None)]


@pytest.mark.parametrize(
    "error", [AmbiguousResponse("lost", reason="connection"), AuthError("no", status=401)]
)
def test_not_retried(error: Exception) -> None:
    attempt = Flaky(error)
    with pytest.raises(type(error)):
        call_with_retries(attempt, policy=FAST, what="test")
    assert attempt.calls == 1


def test_gives_up_saying_attempts_and_time() -> None:
    attempt = Flaky(*[TransientError("busy", status=503, reason="503") for _ in range(10)])
    with pytest.raises(TransientError, match=r"busy Gave up after 4 attempts over \d+\.\d s") as caught:
        call_with_retries(attempt, policy=FAST, what="test")
    assert attempt.calls == 4
    assert caught.value.status == 503
    assert isinstance(caught.value.__cause__, TransientError)


def test_retry_after_is_a_floor() -> None:
    attempt = Flaky(TransientError("slow down", status=429, retry_after=0.3))
    started = time.monotonic()
    call_with_retries(attempt, policy=FAST, what="test")
    assert time.monotonic() - started >= 0.3


def test_retry_after_beyond_the_cap_fails_at_once() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=0.01, backoff_max_s=0.02, retry_after_cap_s=1)
    attempt = Flaky(TransientError("hourly limit", status=429, retry_after=3600))
    started = time.monotonic()
    with pytest.raises(TransientError, match="retry later") as caught:
        call_with_retries(attempt, policy=policy, what="test")
    assert time.monotonic() - started < 0.5
    assert caught.value.retry_after == 3600
    assert attempt.calls == 1


def test_stop_event_interrupts_a_wait() -> None:
    stop = threading.Event()
    attempt = Flaky(*[TransientError("slow down", status=429, retry_after=30) for _ in range(3)])

    def stop_once_refused() -> None:  # the call is then waiting the 30 s it was told to
        try:
            wait_until(lambda: attempt.calls >= 1, 10, "the first attempt")
        finally:
            stop.set()

    stopper = threading.Thread(target=stop_once_refused)
    stopper.start()
    started = time.monotonic()
    with pytest.raises(TransientError, match="stopped"):
        call_with_retries(attempt, policy=RetryPolicy(attempts=3), what="test", stop_event=stop)
    stopper.join()
    assert time.monotonic() - started < 2
    assert attempt.calls == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused_is_retried_then_transient() -> None:
    port = closed_port()
    reasons: list[str] = []
    settings = ClientSettings(
        url=f"http://127.0.0.1:{port}",
        username="svc.import",
        password="s3cret-pw",
        retry_attempts=3,
        retry_backoff_s=0.01,
        retry_backoff_max_s=0.02,
    )
    client = InstanceClient(settings, on_retry=lambda reason, status: reasons.append(reason))
    with client, pytest.raises(TransientError) as caught:
        client.insert_multiple("u_x", b'{"records": []}')
    error = caught.value
    assert not isinstance(error, AmbiguousResponse)  # never reached the instance: safe to resend
    assert "instance unreachable" in str(error)
    assert f"http://127.0.0.1:{port}" in str(error)
    assert "[instance] url" in str(error)
    assert "Gave up after 3 attempts" in str(error)
    assert "s3cret-pw" not in str(error)
    assert reasons == ["connection", "connection"]


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 10])
def test_a_429_without_retry_after_waits_capped_exponential_with_jitter_never_near_zero(attempt: int) -> None:
    import random

    from importer.servicenow.retry import rate_limit_floor_s

    policy = RetryPolicy(backoff_s=0.05, backoff_max_s=30.0, rate_limit_backoff_s=1.0)
    rng = random.Random(attempt)
    waits = [rate_limit_floor_s(policy, attempt, rng) for _ in range(200)]
    ceiling = min(30.0, 2 ** (attempt - 1))
    assert min(waits) >= ceiling / 2  # never the tens of milliseconds that hammer a throttled instance
    assert max(waits) <= ceiling  # capped
    assert max(waits) - min(waits) > ceiling / 10  # jittered: parallel workers do not knock in step
