"""`kind: app_service` mappings and rows -> services: pure, no instance."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from importer.appservice_mapping import plan_services
from importer.errors import ConfigError
from importer.mapping import parse_mapping, translate_row
from importer.mapping_files import load_mapping
from importer.readers.base import SourceRow

REPO = Path(__file__).resolve().parents[1]


def mapping(**columns: str):  # type: ignore[no-untyped-def]
    return parse_mapping("services", {"kind": "app_service", "columns": columns}, "mappings/services.yaml")


def rows(m, *records: dict[str, str]):  # type: ignore[no-untyped-def]
    return [translate_row(m, SourceRow(n + 2, r)) for n, r in enumerate(records)]


def test_the_shipped_mapping_is_an_app_service_mapping() -> None:
    m = load_mapping(REPO / "mappings" / "services.yaml")
    assert (m.kind, m.staging_table) == ("app_service", "cmdb_ci_service_auto")
    assert {c.to for c in m.columns} >= {"name", "ci", "parent_ci", "cmdb_group", "business_app"}
    assert next(c for c in m.columns if c.to == "name").required


def test_every_problem_of_an_app_service_mapping_at_once() -> None:
    data = yaml.safe_load(
        """
        kind: app_service
        staging_table: u_x
        columns: {"Service": nom, "Class": ci_class, "Env": environment, "Env2": environment}
        """
    )
    with pytest.raises(ConfigError) as caught:
        parse_mapping("services", data, "mappings/services.yaml")
    text = "\n".join(caught.value.problems)
    assert "staging_table" in text  # not a key of this kind
    assert "'nom' is not a service field" in text
    assert "no column is mapped to name" in text
    assert "more than one column is mapped to 'environment'" in text
    assert "ci_class is mapped but ci is not" in text
    with pytest.raises(ConfigError, match="kind: must be one of import_set, app_service"):
        parse_mapping("x", {"kind": "cmdb", "staging_table": "u_x", "columns": {"A": "A"}}, "x.yaml")


def test_rows_group_into_services_and_conflicts_make_every_row_of_that_service_invalid() -> None:
    m = mapping(Service="name", Env="environment", Apps="business_app", Parent="parent_ci", CI="ci")
    plan = plan_services(
        rows(
            m,
            {"Service": "Pay", "Env": "Prod", "Apps": "Payroll; HR ;Payroll", "CI": "web"},
            {"Service": "Mail", "Env": "Prod"},
            {"Service": "Pay", "Env": "", "Apps": "Email", "Parent": "web", "CI": "db"},
            {"Service": "Mail", "Env": "Test"},
            {"Service": "", "Env": "Prod"},
        )
    )
    [pay] = plan.services
    assert (pay.name, pay.environment, pay.source_rows) == ("Pay", "Prod", [2, 4])
    assert pay.rows[0].lists["business_app"] == ("Payroll", "HR")
    assert (pay.rows[1].parent_ci, pay.rows[1].ci) == ("web", "db")
    assert [n for n, _ in plan.invalid] == [3, 5, 6]
    conflict = dict(plan.invalid)[3]
    assert conflict == dict(plan.invalid)[5]
    assert "environment is 'Prod' on row 3 but 'Test' on row 5" in conflict
    assert "'Service' is required but empty" in dict(plan.invalid)[6]


def test_a_value_longer_than_the_api_takes_is_invalid_before_anything_is_sent() -> None:
    m = mapping(Service="name", Version="version")
    plan = plan_services(rows(m, {"Service": "Pay", "Version": "1" * 41}))
    assert plan.services == []
    assert plan.invalid == [(2, "version is longer than 40 characters (41)")]
