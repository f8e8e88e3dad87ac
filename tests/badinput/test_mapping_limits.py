"""Hostile mappings: patterns that backtrack, YAML alias bombs, oversized files; control
characters in cells refused or stripped as the mapping says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from importer.errors import ConfigError
from importer.mapping import parse_mapping, pattern_warnings, translate_row
from importer.mapping_files import load_mapping
from importer.readers.base import SourceRow


def mapping(**extra: object) -> object:
    data = {"staging_table": "u_x", "columns": {"Name": {"to": "Name", "pattern": "^(a|aa)+$"}}}
    data.update(extra)
    return parse_mapping("x", data, "mappings/x.yaml")


def test_a_backtracking_pattern_makes_the_row_invalid_within_its_time_bound() -> None:
    started = time.monotonic()
    result = translate_row(mapping(), SourceRow(2, {"Name": "a" * 40 + "!"}), pattern_timeout_s=0.1)
    assert time.monotonic() - started < 5
    assert result.record is None
    assert "pattern ^(a|aa)+$ took more than 0.1 s" in (result.problem or "")
    assert translate_row(mapping(), SourceRow(3, {"Name": "aaaa"})).record == {"Name": "aaaa"}


def test_check_warns_about_nested_quantifiers() -> None:
    nested = parse_mapping(
        "x", {"staging_table": "u_x", "columns": {"A": {"to": "A", "pattern": r"^(\w+\s?)*$"}}}, "x.yaml"
    )
    [warning] = pattern_warnings(nested)
    assert "columns.A.pattern" in warning and "nests quantifiers" in warning
    plain = parse_mapping(
        "x", {"staging_table": "u_x", "columns": {"A": {"to": "A", "pattern": "^a+$"}}}, "x.yaml"
    )
    assert pattern_warnings(plain) == []


def test_control_characters_are_refused_or_stripped_as_the_mapping_says() -> None:
    row = SourceRow(4, {"Name": "Eng\x00in\x1beering"})
    refused = translate_row(mapping(columns={"Name": "Name"}), row)
    assert refused.problem == (
        "'Name' holds a control character (U+0000 NUL) at position 4; remove it from the file, "
        "or set control_chars: strip in the mapping"
    )
    stripped = translate_row(mapping(columns={"Name": "Name"}, control_chars="strip"), row)
    assert stripped.record == {"Name": "Engineering"}
    kept = translate_row(mapping(columns={"Name": "Name"}), SourceRow(5, {"Name": "a\tb\r\nc"}))
    assert kept.record == {"Name": "a\tb\r\nc"}  # tab, CR and LF are text


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    path = tmp_path / "bomb.yaml"
    path.write_text("l0: &l0 lol\n" + levels + "staging_table: u_x\ncolumns: {A: A}\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_mapping(path)
    assert time.monotonic() - started < 2
    assert "more than 20 aliases" in str(caught.value) and "lol" not in str(caught.value)
    assert len(str(caught.value)) < 300


def test_an_oversized_mapping_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("staging_table: u_x\n# " + "x" * 2_000_000 + "\ncolumns: {A: A}\n")
    with pytest.raises(ConfigError, match="a mapping is at most 1,048,576"):
        load_mapping(path)


def test_importer_check_prints_the_nested_quantifier_warning(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "names.yaml").write_text(
        'staging_table: u_x\ncolumns:\n  "Name": {to: "Name", pattern: "^(a+)+$"}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "importer", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "warning: mappings/names.yaml: columns.Name.pattern '^(a+)+$' nests quantifiers" in result.stdout
