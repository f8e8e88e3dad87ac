"""The retry policy: which failures are retried, how long to wait, when to give up.

Retried: ``TransientError`` (429, 5xx, a connection refused or timed out before the request
reached the instance, a lost answer to a read). Not retried: ``AmbiguousResponse`` (the
instance may have acted: the caller must look before sending again) and every other error.

Waits are capped exponential backoff with full jitter (uniform in [0, min(max, base * 2^n)]),
never shorter than the instance's Retry-After. A 429 without Retry-After or X-RateLimit-Reset
(a full API_INT semaphore queue, servicenow-notes §11) says nothing about when to come back: its
wait has a floor of its own, doubling per attempt, capped, with jitter (half to all of it), so
a throttled client never knocks again within milliseconds. Every wait is ``stop_event.wait(delay)``, so a
shutdown interrupts it at once.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from importer.errors import AmbiguousResponse, TransientError

from .settings import RETRY_AFTER_CAP_S, ClientSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

OnRetry = Callable[[str, int | None], None]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    # A Retry-After longer than this is not waited out: see settings.RETRY_AFTER_CAP_S.
    retry_after_cap_s: float = RETRY_AFTER_CAP_S
    # The first wait after a 429 that names no wait; doubled per attempt, capped by backoff_max_s.
    rate_limit_backoff_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> RetryPolicy:
        return cls(
            attempts=settings.retry_attempts,
            backoff_s=settings.retry_backoff_s,
            backoff_max_s=settings.retry_backoff_max_s,
        )


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError) and not isinstance(exc, AmbiguousResponse)


def _last_error(state: RetryCallState) -> TransientError | None:
    if state.outcome is None:
        return None
    exc = state.outcome.exception()
    return exc if isinstance(exc, TransientError) else None


class wait_backoff_or_retry_after(wait_base):
    """Full-jitter exponential backoff, but at least the Retry-After the instance asked for."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._backoff = wait_random_exponential(multiplier=policy.backoff_s, max=policy.backoff_max_s)

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self._backoff(retry_state) if self._policy.backoff_s > 0 else 0.0
        error = _last_error(retry_state)
        if error is not None and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self._policy.retry_after_cap_s))
        elif error is not None and error.status == 429:
            delay = max(delay, rate_limit_floor_s(self._policy, retry_state.attempt_number))
        return delay


def rate_limit_floor_s(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """The wait after the ``attempt``-th 429 that named no wait: capped exponential, jittered
    between half and all of it (equal jitter: never near zero)."""
    ceiling = min(policy.backoff_max_s, policy.rate_limit_backoff_s * 2 ** max(0, attempt - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


class stop_if_retry_after_exceeds(stop_base):
    """Give up at once when the instance asks for a longer wait than we hold a thread for."""

    def __init__(self, cap_s: float) -> None:
        self._cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = _last_error(retry_state)
        return error is not None and (error.retry_after or 0) > self._cap_s


def call_with_retries(
    attempt: Callable[[], T],
    *,
    policy: RetryPolicy,
    what: str,
    stop_event: threading.Event | None = None,
    on_retry: OnRetry | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, raises something not retryable, or the policy gives up
    (then raise a TransientError saying how many attempts over how long)."""
    # Without a stop event the wait is still Event.wait, never time.sleep.
    event = stop_event if stop_event is not None else threading.Event()

    retry_after_too_long = stop_if_retry_after_exceeds(policy.retry_after_cap_s)

    def before_sleep(state: RetryCallState) -> None:
        error = _last_error(state)
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: attempt %d/%d failed (%s); retrying in %.1f s",
            what,
            state.attempt_number,
            policy.attempts,
            error,
            delay,
        )
        if on_retry is not None and error is not None:
            reason = error.context.get("reason") or (str(error.status) if error.status else "error")
            on_retry(str(reason), error.status)

    def sleep(delay: float) -> None:
        if event.wait(delay):
            raise TransientError(f"stopped while waiting to retry {what}", reason="stopped")

    def give_up(state: RetryCallState) -> T:
        error = _last_error(state)
        assert error is not None  # tenacity gives up only on a retried (transient) failure
        context = {key: value for key, value in error.context.items() if key != "status"}
        if retry_after_too_long(state):
            message = (
                f"{error.message} This is longer than the {policy.retry_after_cap_s:.0f} s the client "
                "waits in-process: retry later."
            )
        else:
            attempts = state.attempt_number
            message = (
                f"{error.message} Gave up after {attempts} attempt{'s' if attempts != 1 else ''} "
                f"over {state.seconds_since_start or 0.0:.1f} s."
            )
        raise TransientError(
            message,
            status=error.status,
            retry_after=error.retry_after,
            attempts=state.attempt_number,
            **context,
        ) from error

    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(policy.attempts) | retry_after_too_long,
        wait=wait_backoff_or_retry_after(policy),
        sleep=sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
    )
    return retrying(attempt)
