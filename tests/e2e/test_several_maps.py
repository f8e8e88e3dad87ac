"""A staging table with several transform maps: one result per map per row, in the report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from importer.sandbox import SandboxServer
from tests.e2e.conftest import Workspace
from tests.instance import default_data


def two_map_data() -> dict[str, Any]:
    data = default_data()
    data["tables"]["u_onboarding_task"] = {
        "display": "short_description",
        "fields": ["employee_number", "short_description"],
    }
    data["staging_tables"]["u_hr_user_import"]["transform_maps"].append(
        {
            "name": "Onboarding tasks",
            "order": 200,
            "target": "u_onboarding_task",
            "field_maps": [
                {"source": "u_employee_number", "target": "employee_number", "coalesce": True},
                {"source": "u_title", "target": "short_description", "required": True},
            ],
        }
    )
    return data


@pytest.fixture
def two_maps(workspace: Workspace) -> Iterator[Workspace]:
    with SandboxServer(data=two_map_data()) as server:
        workspace.server = server
        workspace.write_config()
        yield workspace


def test_every_map_gives_each_row_its_own_result(two_maps: Workspace) -> None:
    ws = two_maps
    ws.mapping(
        "users",
        """
        staging_table: u_hr_user_import
        match: ["users*"]
        columns:
          "Emp ID": "Employee Number"
          "First": "First Name"
          "Title": "Title"
        """,
    )
    path = ws.file("users.csv", "Emp ID,First,Title\n000811,Ann,Welcome pack\n000812,Bob,\n")
    result = ws.cli("import", str(path), "--json")
    assert result.code == 3, result.output  # Bob's onboarding task has no title: error in map 2
    [summary] = json.loads(result.stdout)
    assert summary["rows"] == {"inserted": 1, "error": 1}
    report = json.loads(ws.cli("report", "1", "--format", "json").stdout)
    lines = [(e["source_row"], e["transform_map"], e["state"], e["target_table"]) for e in report]
    assert lines == [
        (2, "HR users", "inserted", "sys_user"),
        (2, "Onboarding tasks", "inserted", "u_onboarding_task"),
        (3, "HR users", "inserted", "sys_user"),
        (3, "Onboarding tasks", "error", "u_onboarding_task"),
    ]
    assert report[0]["display_value"].startswith("Ann")
    assert report[1]["display_value"] == "Welcome pack"
    assert report[3]["message"]  # the instance's reason, whatever its words
    assert ws.table("u_onboarding_task", "employee_number=000811")[0]["short_description"] == "Welcome pack"
