"""Plain helpers for the sandbox tests (fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any

import requests

from importer.sandbox import defaults as d


def rows_of(
    session: requests.Session, staging: str, import_set_id: str, fields: str = ""
) -> list[dict[str, Any]]:
    params = {
        "sysparm_query": f"sys_import_set={import_set_id}^ORDERBYsys_import_row",
        "sysparm_exclude_reference_link": "true",
    }
    if fields:
        params["sysparm_fields"] = fields
    response = session.get(f"{session.base_url}/api/now/table/{staging}", params=params)  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text
    return response.json()["result"]


def two_map_data() -> dict[str, Any]:
    """A small data set: one staging table feeding two target tables, plus one keyed by column name."""
    return {
        "instance": {"seed": 7, "async_transform_delay_ms": 0},
        "users": [
            {
                "user_name": "svc.import",
                "password": d.IMPORT_PASSWORD,
                "roles": ["import_transformer", "import_admin"],
            }
        ],
        "tables": {
            "u_person": {"display": "name", "fields": ["code", "name"]},
            "u_badge": {"display": "label", "fields": ["code", "label"]},
        },
        "staging_tables": {
            "u_people_import": {
                "columns": {"u_code": {"label": "Code"}, "u_name": {"label": "Name", "max_length": 10}},
                "transform_maps": [
                    {
                        "name": "Badges",
                        "order": 200,
                        "target": "u_badge",
                        "field_maps": [
                            {"source": "u_code", "target": "code", "coalesce": True},
                            {"source": "u_name", "target": "label"},
                        ],
                    },
                    {
                        "name": "People",
                        "order": 100,
                        "target": "u_person",
                        "field_maps": [
                            {"source": "u_code", "target": "code", "coalesce": True},
                            {"source": "u_name", "target": "name", "required": True},
                        ],
                    },
                ],
            },
            "u_by_name_import": {
                "column_mapping": "name",
                "mode": "synchronous",
                "columns": {"u_code": {"label": "Code"}, "u_name": {"label": "Name"}},
                "transform_maps": [
                    {
                        "name": "People by name",
                        "target": "u_person",
                        "field_maps": [
                            {"source": "u_code", "target": "code", "coalesce": True},
                            {"source": "u_name", "target": "name"},
                        ],
                    },
                ],
            },
        },
    }
