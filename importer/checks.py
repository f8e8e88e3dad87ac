"""`importer check`: dry-run a file through its mapping; compare mappings with the instance."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from importer.config import Config
from importer.errors import InputFileError, InstanceError
from importer.mapping import Mapping
from importer.mapping_files import find_mapping
from importer.pipeline import translated_rows, unknown_staging_keys
from importer.readers.options import ReadLimits
from importer.servicenow import InstanceClient

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
        problems += _check_access(client, mappings, echo)
        for name, mapping in sorted(mappings.items()):
            if mapping.kind == "app_service":
                # No staging table: the Application Service API checks each value itself; but the
                # user needs its role, which only a call shows (401 without app_service_admin).
                problems += _check_app_service_role(client, name, echo)
                continue
            try:
                unknown = unknown_staging_keys(client, mapping)
            except InstanceError:
                continue  # unreadable sys_dictionary: said above
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
            try:
                maps = client.count("sys_transform_map", f"source_table={mapping.staging_table}^active=true")
            except InstanceError:
                continue  # unreadable sys_transform_map: said above
            if not maps:
                echo(
                    f"mapping {name}: {mapping.staging_table} has no active transform map; "
                    "rows would stay in staging"
                )
                problems += 1
    if not problems:
        echo(
            "remote check ok: the user may read and load every staging table, and every mapping key "
            "is a column of its staging table"
        )
    return 2 if problems else 0


# Tables importer reads besides the staging tables: import set states, columns, transform maps.
SYSTEM_TABLES = ("sys_import_set", "sys_dictionary", "sys_transform_map")


def _check_access(client: InstanceClient, mappings: dict[str, Mapping], echo: Echo) -> int:
    """Whether the user may do what importer does: read the staging tables (results), the system
    tables, and post to insertMultiple (role import_transformer, or the staging table's ACLs
    when insert_multiple_optimize is off). Each refusal is one line naming what is missing."""
    problems = 0
    staging = sorted({m.staging_table for m in mappings.values() if m.kind != "app_service"})
    if not staging:
        return 0
    for table in [*SYSTEM_TABLES, *staging]:
        try:
            client.check_readable(table)
        except InstanceError as exc:
            echo(f"read access: {exc}")
            problems += 1
    for table in staging:
        try:
            client.check_insert_multiple(table)
        except InstanceError as exc:
            echo(f"insertMultiple: {exc}")
            problems += 1
    return problems


def _check_app_service_role(client: InstanceClient, name: str, echo: Echo) -> int:
    from importer.errors import AuthError
    from importer.servicenow.appservice import AppServiceClient

    try:
        AppServiceClient(client).find_service(name="importer check --remote")
    except AuthError as exc:
        echo(f"mapping {name}: {exc}")
        return 1
    return 0
