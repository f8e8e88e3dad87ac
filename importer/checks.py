"""`importer check`: dry-run a file through its mapping; compare mappings with the instance."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from importer.config import Config
from importer.errors import InputFileError
from importer.mapping import Mapping, find_mapping
from importer.pipeline import translated_rows, unknown_staging_keys
from importer.readers.options import ReadLimits

Echo = Callable[[str], None]
SHOWN = 10


def check_file(
    mappings: dict[str, Mapping],
    path: Path,
    explicit: str | None,
    echo: Echo,
    limits: ReadLimits | None = None,
) -> int:
    """Read and translate every row without sending anything. Exit 2: refused; 3: invalid rows."""
    if not path.is_file():
        raise InputFileError(f"{path}: no such file")
    mapping = find_mapping(mappings, PurePosixPath(path.name), explicit)
    valid = invalid = 0
    example: dict[str, str] | None = None
    for translated in translated_rows(path, mapping, limits=limits):
        if translated.problem is not None:
            invalid += 1
            if invalid <= SHOWN:
                echo(f"  row {translated.number}: invalid: {translated.problem}")
            continue
        valid += 1
        if example is None:
            example = translated.record
    echo(
        f"{path.name}: mapping {mapping.name} -> {mapping.staging_table}: {valid} rows would be sent, "
        f"{invalid} invalid"
    )
    if example is not None:
        echo(f"  first record as sent: {json.dumps(example, ensure_ascii=False)}")
    return 3 if invalid else 0


def check_remote(config: Config, mappings: dict[str, Mapping], echo: Echo) -> int:
    """Flag every key a mapping sends that its staging table does not have: ServiceNow drops
    unknown keys silently and the rows land with those fields empty."""
    from importer.app import instance_client

    problems = 0
    with instance_client(config) as client:
        for name, mapping in sorted(mappings.items()):
            if mapping.kind == "app_service":
                continue  # no staging table: the Application Service API checks each value itself
            unknown = unknown_staging_keys(client, mapping)
            if unknown is None:
                echo(
                    f"mapping {name}: staging table {mapping.staging_table} has no columns on the instance "
                    "(does it exist? is the user allowed to read sys_dictionary?)"
                )
                problems += 1
                continue
            for message in unknown:
                echo(f"mapping {name}: {message}")
                problems += 1
            maps = client.count("sys_transform_map", f"source_table={mapping.staging_table}^active=true")
            if not maps:
                echo(
                    f"mapping {name}: {mapping.staging_table} has no active transform map; "
                    "rows would stay in staging"
                )
                problems += 1
    if not problems:
        echo("remote check ok: every mapping key is a column of its staging table")
    return 2 if problems else 0
