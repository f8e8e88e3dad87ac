"""Asynchronous transform order: varying without run_after, strict with it."""

from __future__ import annotations

from sandbox_helpers import rows_of

from importer.sandbox import defaults as d

DEPT = "u_department_import"


def _data(seed: int, delay_ms: int = 200) -> dict:
    return {
        "instance": {"seed": seed, "async_transform_delay_ms": delay_ms},
        "users": [
            {
                "user_name": "svc.import",
                "password": d.IMPORT_PASSWORD,
                "roles": ["import_transformer", "import_admin"],
            }
        ],
        "tables": {"cmn_department": {"display": "name", "fields": ["id", "name"]}},
        "staging_tables": {
            DEPT: {
                "columns": {"u_code": {"label": "Code"}, "u_name": {"label": "Name"}},
                "transform_maps": [
                    {
                        "name": "Departments",
                        "target": "cmn_department",
                        "field_maps": [
                            {"source": "u_code", "target": "id", "coalesce": True},
                            {"source": "u_name", "target": "name"},
                        ],
                    }
                ],
            }
        },
    }


def _post_sets(srv, session, count: int, chained: bool) -> list[str]:
    """Post count sets that each rename department X; the final name shows which set ran last."""
    ids: list[str] = []
    for i in range(count):
        params = {"run_after": ids[-1]} if chained and ids else {}
        r = session.post(
            f"{srv.url}/api/now/import/{DEPT}/insertMultiple",
            params=params,
            json={"records": [{"Code": "X", "Name": f"v{i}"}]},
        )
        assert r.status_code == 201
        ids.append(r.json()["import_set_id"])
    return ids


def _final_name(srv, session) -> str:
    assert srv.wait_idle(10)
    [dept] = session.get(f"{srv.url}/api/now/table/cmn_department", params={"sysparm_query": "id=X"}).json()[
        "result"
    ]
    return dept["name"]


def test_without_run_after_the_order_varies(make_sandbox, api):
    # Eight instances, five sets each, all posted in the same order within one scheduling period (1 s,
    # generous for a loaded host): the set that transforms last differs between seeds.
    instances = []
    for seed in range(8):
        srv = make_sandbox(_data(seed, delay_ms=1000))
        s = api(srv)
        _post_sets(srv, s, 5, chained=False)
        instances.append((srv, s))
    winners = {_final_name(srv, s) for srv, s in instances}
    assert len(winners) > 1


def test_with_run_after_the_order_is_strict(make_sandbox, api):
    for seed in range(3):
        srv = make_sandbox(_data(seed, delay_ms=20))
        s = api(srv)
        ids = _post_sets(srv, s, 5, chained=True)
        assert _final_name(srv, s) == "v4"
        sets = {r["sys_id"]: r for r in s.get(f"{srv.url}/api/now/table/sys_import_set").json()["result"]}
        assert all(sets[i]["state"] == "processed" for i in ids)
        srv.stop()


def test_rows_with_one_coalesce_value_transform_in_row_order_within_a_set(make_sandbox, api):
    srv = make_sandbox(_data(3, delay_ms=0))
    s = api(srv)
    records = [{"Code": "Y", "Name": f"n{i}"} for i in range(300)]
    set_id = s.post(f"{srv.url}/api/now/import/{DEPT}/insertMultiple", json={"records": records}).json()[
        "import_set_id"
    ]
    assert srv.wait_idle(10)
    [dept] = s.get(f"{srv.url}/api/now/table/cmn_department", params={"sysparm_query": "id=Y"}).json()[
        "result"
    ]
    assert dept["name"] == "n299"
    states = [r["sys_import_state"] for r in rows_of(s, DEPT, set_id)]
    assert states == ["inserted"] + ["updated"] * 299


def test_a_run_after_naming_no_import_set_never_transforms(make_sandbox, api):
    srv = make_sandbox(_data(1, delay_ms=0))
    s = api(srv)
    r = s.post(
        f"{srv.url}/api/now/import/{DEPT}/insertMultiple",
        params={"run_after": "f" * 32},
        json={"records": [{"Code": "Z", "Name": "waits"}]},
    )
    assert r.status_code == 201
    assert not srv.wait_idle(0.3)
    iset = s.get(f"{srv.url}/api/now/table/sys_import_set/{r.json()['import_set_id']}").json()["result"]
    assert iset["state"] == "loaded"


def test_states_go_loaded_then_processed(make_sandbox, api):
    srv = make_sandbox(_data(1, delay_ms=300))
    s = api(srv)
    set_id = _post_sets(srv, s, 1, chained=False)[0]
    url = f"{srv.url}/api/now/table/sys_import_set/{set_id}"
    assert s.get(url).json()["result"]["state"] == "loaded"
    assert srv.wait_idle(5)
    assert s.get(url).json()["result"]["state"] == "processed"
