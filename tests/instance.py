"""What a person (or a test) sees at the sandbox instance, and its default data to vary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import requests
import yaml

import importer.sandbox
from importer.sandbox.defaults import ADMIN_PASSWORD, ADMIN_USER

DEFAULT_DATA = Path(importer.sandbox.__file__).parent / "data" / "default.yaml"


def table_rows(url: str, table: str, query: str = "", fields: str = "") -> list[dict[str, Any]]:
    """A table's records through the Table API, as admin."""
    params = {"sysparm_query": query, "sysparm_exclude_reference_link": "true"}
    if fields:
        params["sysparm_fields"] = fields
    response = requests.get(
        f"{url}/api/now/table/{table}",
        params=params,
        auth=(ADMIN_USER, ADMIN_PASSWORD),
        headers={"Accept": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    return list(response.json()["result"])


def default_data() -> dict[str, Any]:
    """A fresh copy of the sandbox's default data set, for a test to change."""
    return copy.deepcopy(yaml.safe_load(DEFAULT_DATA.read_text()))
