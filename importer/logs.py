"""Log lines that cannot be forged: one event is one line, whatever a file name holds.

A dropped file's name is chosen by whoever drops it; a newline in it would otherwise write a
line of its own (a fake "file=7 finished" event) into the journal. Every message is escaped
here, once, so no call site has to remember to; a traceback keeps its own lines after it.
"""

from __future__ import annotations

import logging


def escape_for_log(text: str) -> str:
    """``text`` with control and other unprintable characters as Python escapes (``\\n``,
    ``\\x1b``, ``\\u202e``); printable text, spaces included, unchanged."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_for_log(record.message)
        return super().formatMessage(record)
