"""Pure pieces of the pipeline."""

from __future__ import annotations

from importer.pipeline import prefetched


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
