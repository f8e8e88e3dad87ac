"""importer.toml as a user writes it: defaults, environment overrides, secrets, every error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from importer.config import load_config
from importer.errors import ConfigError

SECRET = "s3cr3t-Pa55word!"


@pytest.fixture(autouse=True)
def _in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ./importer.toml is looked up in the working directory: make sure there is none by accident.
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "importer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return excinfo.value.problems


def test_no_file_means_every_default() -> None:
    config = load_config(env={})
    assert config.source is None
    assert config.instance.is_sandbox
    assert config.instance.auth == "basic"
    assert config.instance.timeout_s == 30
    assert config.instance.verify_tls is True
    assert config.instance.max_request_bytes == 5_000_000
    assert config.paths.inbox == Path("inbox")
    assert config.paths.mappings == Path("mappings")
    assert config.paths.state == Path("var")
    assert config.paths.ledger == "sqlite:///var/ledger.db"
    assert config.paths.processing == Path("var/processing")
    assert config.paths.archive == Path("var/archive")
    assert config.paths.failed == Path("var/failed")
    assert config.paths.reports == Path("var/reports")
    assert config.daemon.settle_s == 2
    assert config.daemon.poll_s == 10
    assert config.daemon.rescan_s == 60
    assert config.daemon.watch is True
    assert config.daemon.max_concurrent_files == 2
    assert config.daemon.retention_days == 90
    assert config.daemon.metrics_port is None


def test_the_example_from_the_docs_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[instance]
url = "https://acme.service-now.com/"
auth = "basic"
username = "svc.import"
timeout_s = 30
verify_tls = true
max_request_bytes = 5_000_000

[paths]
inbox = "inbox"
mappings = "mappings"
state = "/var/lib/importer"

[daemon]
settle_s = 2
poll_s = 10
rescan_s = 60
""",
    )
    config = load_config(path, env={"IMPORTER_INSTANCE__PASSWORD": SECRET})
    assert config.source == path
    assert config.instance.url == "https://acme.service-now.com"  # trailing slash dropped
    assert not config.instance.is_sandbox
    assert config.instance.password_value() == SECRET
    # The ledger follows the state folder unless given.
    assert config.paths.ledger == "sqlite:////var/lib/importer/ledger.db"
    assert config.paths.archive == Path("/var/lib/importer/archive")


def test_found_through_importer_config_then_working_directory(tmp_path: Path) -> None:
    elsewhere = write(tmp_path, "[daemon]\nsettle_s = 7\n", name="elsewhere.toml")
    write(tmp_path, "[daemon]\nsettle_s = 3\n")
    assert load_config(env={"IMPORTER_CONFIG": str(elsewhere)}).daemon.settle_s == 7
    local = load_config(env={})
    assert local.daemon.settle_s == 3
    assert local.source == Path("importer.toml")


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match=r"gone.toml.*IMPORTER_CONFIG"):
        load_config(env={"IMPORTER_CONFIG": "gone.toml"})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[daemon]\nsettle_s = 2\n[paths]\nledger = "sqlite:///x.db"\n')
    config = load_config(
        path,
        env={
            "IMPORTER_DAEMON__SETTLE_S": "0.5",
            "importer_daemon__watch": "false",  # wrong case in the prefix is not an override
            "IMPORTER_Daemon__Watch": "false",
            "IMPORTER_INSTANCE__VERIFY_TLS": "false",
            "IMPORTER_DAEMON__METRICS_PORT": "9100",
            "IMPORTER_PATHS__LEDGER": "postgresql+psycopg://u@db/importer",
            "IMPORTER_TEST_PG_URL": "not an override",
        },
    )
    assert config.daemon.settle_s == 0.5
    assert config.daemon.watch is False
    assert config.instance.verify_tls is False
    assert config.daemon.metrics_port == 9100
    assert config.paths.ledger == "postgresql+psycopg://u@db/importer"


def test_verify_tls_takes_a_ca_bundle_path(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    path = write(tmp_path, f'[instance]\nverify_tls = "{bundle}"\n')
    assert load_config(path, env={}).instance.verify_tls == str(bundle)
    with pytest.raises(ConfigError, match=r"instance.verify_tls: CA bundle '/nowhere.pem' is not a file"):
        load_config(write(tmp_path, '[instance]\nverify_tls = "/nowhere.pem"\n'), env={})


def test_every_error_at_once_with_file_key_and_message(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[instance]
url = "acme.service-now.com"
auth = "kerberos"
timeout_s = 0
max_request_bytes = 100
retry_attempts = "many"
pasword = "x"

[daemon]
settle = 3
max_concurrent_files = 0

[pathz]
inbox = "in"
""",
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={"IMPORTER_DAEMON__POLL_S": "soon"})
    problems = problems_of(excinfo)
    where = str(path)
    expected = [
        f"{where}: instance.pasword: unknown key; did you mean instance.password?",
        f"{where}: daemon.settle: unknown key; did you mean daemon.settle_s?",
        f"{where}: pathz: unknown section; did you mean [paths]?",
        f'{where}: instance.url: must be "sandbox" or an address like https://acme',
        f"{where}: instance.auth: must be one of 'basic' or 'oauth'",
        f"{where}: instance.timeout_s: must be greater than 0",
        f"{where}: instance.max_request_bytes: must be at least 10_000",
        f"{where}: instance.retry_attempts: must be a whole number, got 'many'",
        f"{where}: daemon.max_concurrent_files: must be at least 1",
        "IMPORTER_DAEMON__POLL_S (environment): must be a number, got 'soon'",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in problems), (start, problems)
    assert len(problems) == len(expected)
    assert all("\n" not in p for p in problems)
    assert str(excinfo.value) == "\n".join(problems)


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(
            env={
                "IMPORTER_INSTANCE__TIMEOUT_S": "-1",
                "IMPORTER_INSTANCE__TIMEOUT": "5",
                "IMPORTER_DEAMON__SETTLE_S": "1",
            }
        )
    assert problems_of(excinfo) == [
        "IMPORTER_DEAMON__SETTLE_S (environment): unknown section 'deamon' (sections: instance, paths, "
        "daemon, notify, limits); did you mean IMPORTER_DAEMON__SETTLE_S?",
        "IMPORTER_INSTANCE__TIMEOUT (environment): unknown key instance.timeout; "
        "did you mean IMPORTER_INSTANCE__TIMEOUT_S?",
        "IMPORTER_INSTANCE__TIMEOUT_S (environment): must be greater than 0, got '-1'",
    ]


def test_invalid_toml_is_one_problem_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[instance]\nurl = \n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    [problem] = problems_of(excinfo)
    assert problem.startswith(f"{path}: invalid TOML:")
    assert "line 2" in problem and "column" in problem


def test_a_real_instance_needs_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, '[instance]\nurl = "https://acme.service-now.com"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    problems = problems_of(excinfo)
    assert problems[0] == f'{path}: instance.username: required with auth = "basic"'
    assert problems[1].startswith(f'{path}: instance.password: required with auth = "basic"; set ')
    assert "IMPORTER_INSTANCE__PASSWORD" in problems[1]

    oauth = write(tmp_path, '[instance]\nurl = "https://acme.service-now.com"\nauth = "oauth"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(oauth, env={})
    text = str(excinfo.value)
    for key in ("username", "password", "client_id", "client_secret"):
        assert f"instance.{key}: required" in text

    client_credentials = write(
        tmp_path,
        '[instance]\nurl = "https://acme.service-now.com"\nauth = "oauth"\n'
        'grant = "client_credentials"\nclient_id = "abc"\n',
    )
    config = load_config(client_credentials, env={"IMPORTER_INSTANCE__CLIENT_SECRET": SECRET})
    assert config.instance.client_secret_value() == SECRET
    assert config.instance.password_value() is None


def test_an_instance_url_must_be_the_root_without_credentials(tmp_path: Path) -> None:
    """Checked when the config is loaded (not later, when the client is built), with the file
    named; a URL carrying a password is refused without echoing it."""
    cases = {
        "https://svc:hunter2@acme.service-now.com": "must not contain credentials; set username and password",
        "https://acme.service-now.com/?sysparm_limit=1": "must be the instance's root, without a query",
        "https://": 'must be "sandbox" or an address like https://acme.service-now.com',
    }
    for url, problem in cases.items():
        path = write(tmp_path, f'[instance]\nurl = "{url}"\nusername = "svc"\n')
        with pytest.raises(ConfigError) as excinfo:
            load_config(path, env={"IMPORTER_INSTANCE__PASSWORD": SECRET})
        assert problems_of(excinfo)[0].startswith(f"{path}: instance.url: {problem}"), url
        assert "hunter2" not in str(excinfo.value)


def test_field_errors_do_not_hide_cross_field_errors(tmp_path: Path) -> None:
    path = write(tmp_path, '[instance]\nurl = "https://acme.service-now.com"\ntimeout_s = -5\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    text = str(excinfo.value)
    assert "instance.timeout_s: must be greater than 0" in text
    assert "instance.username: required" in text


def test_secrets_from_file_and_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET + "\n")
    base = '[instance]\nurl = "https://acme.service-now.com"\nusername = "svc"\n'
    from_file = write(tmp_path, base + f'password_file = "{tmp_path / "pw"}"\n')
    assert load_config(from_file, env={}).instance.password_value() == SECRET

    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "servicenow-password").write_text("from-systemd\n")
    (credentials / "servicenow-client-secret").write_text("client-from-systemd")
    plain = write(tmp_path, base, name="plain.toml")
    config = load_config(plain, env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.instance.password_value() == "from-systemd"
    assert config.instance.client_secret_value() == "client-from-systemd"

    # The value wins over the file, the file over the systemd credential.
    both = load_config(
        from_file, env={"CREDENTIALS_DIRECTORY": str(credentials), "IMPORTER_INSTANCE__PASSWORD": "env"}
    )
    assert both.instance.password_value() == "env"
    assert load_config(
        from_file, env={"CREDENTIALS_DIRECTORY": str(credentials)}
    ).instance.password_value() == (SECRET)


def test_an_unreadable_or_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    path = write(
        tmp_path,
        '[instance]\nurl = "https://acme.service-now.com"\nusername = "svc"\n'
        f'password_file = "{tmp_path / "missing"}"\nclient_secret_file = "{tmp_path / "empty"}"\n',
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    text = str(excinfo.value)
    assert f"instance.password_file: cannot read '{tmp_path / 'missing'}'" in text
    assert f"instance.client_secret_file: '{tmp_path / 'empty'}' is empty" in text


def test_secrets_never_appear_in_repr_or_errors(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(SECRET)
    path = write(
        tmp_path,
        f"""
[instance]
url = "https://acme.service-now.com"
auth = "oauth"
username = "svc"
password = "{SECRET}"
client_secret = "{SECRET}"
""",
    )
    config = load_config(path, env={"IMPORTER_INSTANCE__CLIENT_ID": "abc"})
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert SECRET not in repr(config.instance.model_dump())
    assert config.instance.password_value() == SECRET

    # Errors elsewhere in the file, a secret of the wrong type, a secret under a misspelt key:
    bad = write(
        tmp_path,
        f'[instance]\nurl = "https://acme.service-now.com"\nusername = "svc"\npassword = ["{SECRET}"]\n'
        f'client_secrte = "{SECRET}"\ntimeout_s = -1\n',
        name="bad.toml",
    )
    with pytest.raises(ConfigError) as excinfo:
        load_config(
            bad, env={"IMPORTER_INSTANCE__PASWORD": SECRET, "IMPORTER_INSTANCE__CLIENT_SECRET": SECRET}
        )
    message = str(excinfo.value)
    assert "instance.password: must be a string" in message
    assert "client_secrte: unknown key" in message
    assert "IMPORTER_INSTANCE__PASWORD (environment): unknown key" in message
    assert "instance.timeout_s: must be greater than 0" in message
    assert SECRET not in message


def test_an_empty_environment_variable_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nmetrics_port = 9100\n")
    assert load_config(path, env={"IMPORTER_DAEMON__METRICS_PORT": ""}).daemon.metrics_port is None
