"""Reading a file's rows for posting: through its mapping, in a child process that can be
abandoned, a few batches ahead of the posting thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any, TypeVar

from importer.errors import InputFileError
from importer.isolated import isolated_rows
from importer.mapping import Mapping, TranslatedRow
from importer.readers.options import ReadLimits
from importer.servicenow.settings import MAX_ROW_BYTES

T = TypeVar("T")


def translated_rows(
    path: Path,
    mapping: Mapping,
    name: str | None = None,
    *,
    limits: ReadLimits | None = None,
    stop_event: threading.Event | None = None,
) -> Iterator[TranslatedRow]:
    """Every row of a file through its mapping, headers checked first (InputFileError if wrong),
    read in a child process that can be abandoned (importer.isolated).

    ``name``: the name the file was dropped with, for messages (``path`` may be the copy in
    processing/, whose name carries a time stamp the person never saw).
    """
    try:
        yield from isolated_rows(path, mapping, limits or ReadLimits(), stop_event)
    except InputFileError as exc:
        if name is None or name == path.name:
            raise
        raise InputFileError(str(exc).replace(path.name, name), **exc.context) from exc


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """Produce ``items`` in a helper thread, at most ``depth`` ahead of the consumer.

    Reading, translating and encoding the next batch then overlaps with waiting for the
    instance's answer to the current one. Memory stays bounded by ``depth`` batches. An error in
    the producer is raised in the consumer; a consumer that stops early stops the producer.
    """
    queue: Queue[tuple[str, Any]] = Queue(maxsize=depth)
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not cancelled.is_set():
                    try:
                        queue.put(("item", item), timeout=0.1)
                        break
                    except Full:
                        continue
                if cancelled.is_set():
                    return
            queue.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            queue.put(("error", exc))

    producer = threading.Thread(target=produce, name="prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancelled.set()
        while producer.is_alive():
            with contextlib.suppress(Empty):
                queue.get(timeout=0.05)
        producer.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the reader's file is closed in this thread, not left to the collector


def too_large_for_a_row(record: dict[str, str] | None) -> str | None:
    """ServiceNow skips (and only logs) a staging row over 8126 bytes: refuse it before it is sent."""
    if not record:
        return None
    values = record.values()
    if sum(map(len, values)) * 4 <= MAX_ROW_BYTES:  # no UTF-8 character is longer than 4 bytes
        return None
    size = sum(len(value.encode("utf-8")) for value in values)
    if size <= MAX_ROW_BYTES:
        return None
    return (
        f"row holds {size} bytes of values; ServiceNow stores at most {MAX_ROW_BYTES} bytes per "
        "import set row and would skip it: shorten its longest values"
    )
