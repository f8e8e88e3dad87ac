"""A workbook cell's value (a Python object) as the text the import sends.

Values follow the product's promise: text stays text, numbers carry no ``.0`` artefact,
dates are ``yyyy-MM-dd`` (with `` HH:mm:ss`` when they carry a time), booleans are
``TRUE``/``FALSE`` as Excel shows them, error cells by their error text.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

ZERO_PADDED = re.compile(r"^0+$")  # a number format such as 000000: whole numbers keep leading zeros


def cell_text(value: object, number_format: str | None = None) -> str:
    """A cell's value as the text the import sends (see the module docstring).

    A whole number formatted ``000000`` shows as ``000123`` in Excel — the usual way HR sheets
    keep employee numbers — and is sent as shown, leading zeros included.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value  # text cells, and error cells (their text, e.g. "#N/A")
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if (
        isinstance(value, int | float)
        and number_format
        and ZERO_PADDED.match(number_format)
        and float(value).is_integer()
        and value >= 0
    ):
        return str(int(value)).zfill(len(number_format))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, dt.datetime):
        value = _round_to_second(value)
        if value.time() == dt.time(0, 0):
            return value.strftime("%Y-%m-%d")  # a date cell is a datetime at midnight
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, dt.time):
        moment = _round_to_second(dt.datetime.combine(dt.date(2000, 1, 1), value))
        return moment.strftime("%H:%M:%S")
    if isinstance(value, dt.timedelta):  # a duration format such as [h]:mm:ss
        seconds = round(value.total_seconds())
        sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
        hours, rest = divmod(seconds, 3600)
        return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return str(value)


def number_text(value: float) -> str:
    """A number as Excel's General format would show it, without its 15-digit rounding.

    Integral values lose the ``.0``; others use the shortest text that reads back as the same
    float (``0.1``, not ``0.1000000000000000055``); ordinary magnitudes (1e-7 to 1e21, the
    range JavaScript also writes in plain digits) never use scientific notation.
    """
    if value != value or value in (float("inf"), float("-inf")):
        return repr(value)
    magnitude = abs(value)
    if value.is_integer() and magnitude < 1e21:
        return str(int(value))
    shortest = repr(value)
    if "e" not in shortest:  # 1e-4 to 1e16: repr already writes plain digits
        return shortest
    if 1e-7 <= magnitude < 1e21:
        return format(Decimal(shortest), "f")
    return shortest


def _round_to_second(moment: dt.datetime) -> dt.datetime:
    # Excel stores times as fractions of a day; 13:45:07 may come back as 13:45:06.999999.
    if moment.microsecond >= 500_000:
        moment += dt.timedelta(seconds=1)
    return moment.replace(microsecond=0)
