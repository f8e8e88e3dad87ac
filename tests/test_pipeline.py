"""Pure pieces of the pipeline."""

from __future__ import annotations

from importer.pipeline import prefetched
from importer.servicenow.importsets import holds_values as _holds_values


def test_a_staging_row_is_recognised_by_most_of_its_values() -> None:
    sent = {"Employee Number": "000123", "First Name": "Zoë", "Title": "A" * 60, "Typo": "dropped"}
    staged = {"sys_id": "x", "u_employee_number": "000123", "u_first_name": "Zoë", "u_title": "A" * 40}
    assert _holds_values(staged, sent)  # truncated title, unknown key dropped by the instance
    other = {"sys_id": "y", "u_employee_number": "000124", "u_first_name": "Bo", "u_title": "B"}
    assert not _holds_values(other, sent)


def test_prefetch_hands_items_in_order_and_stops_its_producer_when_the_consumer_stops() -> None:
    produced: list[int] = []

    def items():
        for i in range(1000):
            produced.append(i)
            yield i

    consumer = prefetched(items(), depth=2)
    assert [next(consumer) for _ in range(5)] == [0, 1, 2, 3, 4]
    consumer.close()  # joins the producer thread (the thread-leak guard would fail the test otherwise)
    assert len(produced) <= 5 + 2 + 1  # never more than depth ahead


def test_prefetch_raises_the_producers_error_in_the_consumer() -> None:
    def items():
        yield 1
        raise ValueError("line 7 is broken")

    consumer = prefetched(items(), depth=2)
    assert next(consumer) == 1
    try:
        next(consumer)
    except ValueError as exc:
        assert "line 7" in str(exc)
    else:
        raise AssertionError("the producer's error was lost")
