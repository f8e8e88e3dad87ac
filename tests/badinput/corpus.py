"""The bad-input corpus, generated (nothing large is committed): malformed, hostile and odd drops,
each with what the contract says must become of it.

``expect`` is the file's final state in the ledger (``None``: never taken, it stays where it is);
``reason`` are phrases the refusal (or the invalid row's message) must hold, so that a person can
act on it: the file, the row or position where there is one, and the fix.
"""

from __future__ import annotations

import codecs
import io
import os
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import openpyxl

SOAK = os.environ.get("IMPORTER_SOAK") == "1"

CORPUS_MAPPING = """
    # Every corpus file is read as a list of departments.
    staging_table: u_department_import
    match: ["*"]
    columns:
      "Code": {to: "Code", required: true}
      "Name": "Name"
"""
# A pattern that backtracks exponentially (the `regex` library defuses the textbook ^(a+)+$).
REGEX_BOMB_MAPPING = """
    staging_table: u_department_import
    columns:
      "Code": {to: "Code", required: true}
      "Name": {to: "Name", pattern: "^(a|aa)+$"}
"""


@dataclass
class Case:
    name: str  # the file name as dropped (may hold a folder: "regexbomb/x.csv")
    make: Callable[[Path], None]  # writes the file at the given path
    expect: str | None  # final file state; None: left alone in the inbox
    reason: tuple[str, ...] = ()  # phrases the file's error (or its invalid rows' messages) holds
    rows: dict[str, int] = field(default_factory=dict)  # row states expected, when it is imported
    heavy: bool = False  # only in the soak (big to generate)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _text(text: str) -> Callable[[Path], None]:
    return _bytes(text.encode())


def workbook_bytes(rows: list[list[object]]) -> bytes:
    wb = openpyxl.Workbook()
    ws = wb.active
    for row in rows:
        ws.append(row)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _rewrite_part(workbook: bytes, part: str, edit: Callable[[bytes], bytes]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(workbook)) as z:
        parts = {info.filename: z.read(info.filename) for info in z.infolist()}
    parts[part] = edit(parts[part])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in parts.items():
            z.writestr(name, data)
    return out.getvalue()


def styled_empty_rows(count: int) -> Callable[[Path], None]:
    """One real row, then ``count`` formatted but empty rows (a sheet formatted to its end)."""

    def make(path: Path) -> None:
        base = workbook_bytes([["Code", "Name"], ["STY", "Styled"]])
        rows = "".join(
            f'<row r="{i}" s="0" customFormat="1"><c r="A{i}" s="0"/><c r="B{i}" s="0"/></row>'
            for i in range(3, count + 3)
        ).encode()
        path.write_bytes(
            _rewrite_part(
                base,
                "xl/worksheets/sheet1.xml",
                lambda xml: xml.replace(b"</sheetData>", rows + b"</sheetData>"),
            )
        )

    return make


def cell_bomb(megabytes: int) -> Callable[[Path], None]:
    """A workbook whose one cell (a shared string) inflates to ``megabytes`` of one letter."""

    def make(path: Path) -> None:
        base = workbook_bytes([["Code", "Name"], ["BOM", "x"]])
        with zipfile.ZipFile(io.BytesIO(base)) as z:
            parts = {info.filename: z.read(info.filename) for info in z.infolist()}
        target = next(name for name, data in parts.items() if b"<t>x</t>" in data)
        head, _, tail = parts[target].partition(b"<t>x</t>")
        block = b"a" * (1024 * 1024)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in parts.items():
                if name != target:
                    z.writestr(name, data)
            with z.open(target, "w", force_zip64=True) as part:
                part.write(head + b"<t>")
                for _ in range(megabytes):
                    part.write(block)
                part.write(b"</t>" + tail)

    return make


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    + b']>\n<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
    b'<row r="1"><c r="A1" t="inlineStr"><is><t>&lol9;</t></is></c></row></sheetData></worksheet>'
)


def _blank_lines(count: int) -> Callable[[Path], None]:
    return _bytes(b"Code,Name\n" + b"\n" * count + b"BLK,After the blank lines\n")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


def cases(outside: Path) -> list[Case]:
    """Every case; ``outside`` is a folder the daemon must never touch (links point into it)."""

    def symlink(path: Path) -> None:
        path.symlink_to(outside / "secret.csv")

    def hard_link(path: Path) -> None:
        target = outside / "secret-hard.csv"
        target.write_text("Code,Name\nSEC,Secret\n")
        os.link(target, path)

    rng = random.Random(8)
    blank_count = 1_000_000
    return [
        # --- CSV ---------------------------------------------------------------------------------
        Case("nul.csv", _text("Code,Name\nNUL,Eng\x00ineering\nOK1,Fine\n"), "done_with_errors",
             ("'Name' holds a control character (U+0000 NUL) at position 4", "control_chars: strip"),
             {"invalid": 1, "inserted": 1}),
        Case("unbalanced.csv", _text('Code,Name\nQ1,"Engineering\nQ2,Finance\n'), "rejected",
             ("unbalanced.csv", "row 2", "never closed", "check the quotes")),
        Case("ragged.csv", _text("Code,Name\nRG1,Eng,extra\nRG2,Short row\n"), "done_with_errors",
             ("row 2 has 3 cells but the header has 2 columns",), {"invalid": 1, "inserted": 1}),
        Case("dupheaders.csv", _text("Code,Code\nD1,D2\n"), "rejected",
             ("dupheaders.csv", '"Code" more than once', "make every column name unique")),
        Case("emptyheader.csv", _text("Code,,Name\nE1,,x\n"), "rejected",
             ("emptyheader.csv", "no name for column 2", "give every column a name")),
        Case("utf16.csv", _bytes(codecs.BOM_UTF16_LE + "Code,Name\nU1,x\n".encode("utf-16-le")), "rejected",
             ("utf16.csv", "it is UTF-16", "encoding: utf-16")),
        Case("mixed.csv", _bytes("Code,Name\nM1,Zoë\nM2,".encode() + "Zoë".encode("cp1252") + b"\n"), "rejected",
             ("mixed.csv", "0xeb on line 3", "encoding: cp1252")),
        Case("cronly.csv", _text("Code,Name\rCR1,One\rCR2,Two\r"), "done", (), {"inserted": 2}),
        Case("blanklines.csv", _blank_lines(blank_count), "done", (), {"inserted": 1}),
        Case("longcell.csv", _text("Code,Name\nLC1," + "y" * 40_000 + "\nLC2,short\n"), "done_with_errors",
             ("row 2", "'Name' holds 40,000 characters", "max_cell_chars"), {"invalid": 1, "inserted": 1}),
        Case("hugecell.csv", _text("Code,Name\nHC1," + "z" * 2_000_000 + "\n"), "rejected",
             ("hugecell.csv", "row 2", "longer than 1,000,000 characters", "check the delimiter")),
        # --- Excel -------------------------------------------------------------------------------
        Case("random.xlsx", _bytes(rng.randbytes(4096)), "rejected",
             ("random.xlsx", "is not a readable .xlsx workbook", "save it again")),
        Case("csvnamed.xlsx", _text("Code,Name\nX1,x\n"), "rejected",
             ("csvnamed.xlsx", "a CSV file renamed .xlsx? Name it .csv",)),
        Case("encrypted.xlsx", _bytes(bytes.fromhex("d0cf11e0a1b11ae1") + rng.randbytes(2048)), "rejected",
             ("encrypted.xlsx", "password-protected", "remove the password")),
        Case("old.xls", _bytes(bytes.fromhex("d0cf11e0a1b11ae1") + rng.randbytes(2048)), "rejected",
             ("old.xls", "save it as .xlsx")),
        Case("laughs.xlsx", lambda p: p.write_bytes(_rewrite_part(
            workbook_bytes([["Code"], ["L1"]]), "xl/worksheets/sheet1.xml", lambda _xml: BILLION_LAUGHS)),
             "rejected", ("laughs.xlsx", "declares XML entities", "billion laughs")),
        Case("cellbomb.xlsx", cell_bomb(1024 if SOAK else 64), "rejected",
             ("cellbomb.xlsx", "inflates", "compression bomb", "it was not read")),
        Case("styled.xlsx", styled_empty_rows(1_000_000 if SOAK else 200_000), "done", (), {"inserted": 1}),
        # --- JSON --------------------------------------------------------------------------------
        Case("deep.json", _text('[{"Code":"DP0","Name":"x"},' + "[" * 100_000 + "]" * 100_000 + ',{"Code":"DP1","Name":'
                                + '{"a":' * 50 + "1" + "}" * 50 + "}]"), "done_with_errors",
             ("record 2 nests objects/arrays more than 32 deep", "max_json_depth"), {"invalid": 2, "inserted": 1}),
        Case("bignum.json", _text('[{"Code":"BN1","Name":1e999999999},{"Code":"BN2","Name":"x"}]'), "done_with_errors",
             ("record 1", "1,000,000,000 digits", "max_number_digits", "send it as a string"),
             {"invalid": 1, "inserted": 1}),
        Case("object.json", _text('{"Code":"O1"}'), "rejected",
             ("object.json", "the top level is an object", "json: {records: <dotted path>}")),
        Case("truncated.json", _text('[{"Code":"T1","Name":"x"},{"Code":'), "rejected",
             ("truncated.json", "is not valid JSON", "Fix the file")),
        Case("dupkeys.json", _text('[{"Code":"DK1","Code":"DK2"},{"Code":"DK3","Name":"x"}]'), "done_with_errors",
             ("record 1 has the key 'Code' twice",), {"invalid": 1, "inserted": 1}),
        Case("nan.json", _text('[{"Code":"NA1","Name":NaN}]'), "rejected", ("nan.json", "is not valid JSON")),
        Case("longint.json", _text('[{"Code":"LI1","Name":' + "9" * 5000 + "}]"), "rejected",
             ("longint.json", "number too long", "as strings")),
        # --- the file system ---------------------------------------------------------------------
        Case("folder.csv", _folder, None),
        Case("fifo.csv", _fifo, None),
        Case("link.csv", symlink, None),
        Case("hardlink.csv", hard_link, None),
        Case("with space.csv", _text("Code,Name\nSP1,x\n"), "done", (), {"inserted": 1}),
        Case("ünïcödé ✓.csv", _text("Code,Name\nUN1,x\n"), "done", (), {"inserted": 1}),
        Case("new\nline FORGED file=1 finished.csv", _text("Code,Name\nNL1,x\n"), "done", (), {"inserted": 1}),
        Case("-leading-dash.csv", _text("Code,Name\nLD1,x\n"), "done", (), {"inserted": 1}),
        Case("n" * 251 + ".csv", _text("Code,Name\nLN1,x\n"), "done", (), {"inserted": 1}),
        # --- the mapping's patterns --------------------------------------------------------------
        Case("regexbomb/names.csv", _text("Code,Name\nRB1," + "a" * 40 + "!\nRB2,aaaa\n"), "done_with_errors",
             ("pattern ^(a|aa)+$ took more than", "pattern_timeout_s", "simplify the pattern"),
             {"invalid": 1, "inserted": 1}),
    ]  # fmt: skip


def random_files(count: int, seed: int = 8) -> list[Case]:
    """Random bytes under each supported suffix: each must import or be refused, cleanly."""
    rng = random.Random(seed)
    made = []
    for i in range(count):
        suffix = (".csv", ".json", ".xlsx")[i % 3]
        made.append(Case(f"random-{i}{suffix}", _bytes(rng.randbytes(rng.randint(0, 2048))), "any"))
    return made
