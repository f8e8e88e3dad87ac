"""One typed config object: file -> environment -> secrets, every error reported at once.

Where the file is found: ``load_config(path)`` (``--config PATH``), else ``$IMPORTER_CONFIG``, else
``./importer.toml`` if it exists, else no file at all and every default applies (the embedded
sandbox, ``./inbox``, ``./mappings``, state under ``./var``).

Any key can be overridden from the environment as ``IMPORTER_<SECTION>__<KEY>`` (section and key
case-insensitive), e.g. ``IMPORTER_DAEMON__SETTLE_S=0.5``. Secrets (password, client_secret) come
from the config/environment value, a ``*_file`` key, or a systemd credential under
``$CREDENTIALS_DIRECTORY`` — they are held as ``SecretStr`` so they never print.

Every problem is one line ``<where>: <section.key>: <what is wrong>``, where ``<where>`` is the
config file as given or ``IMPORTER_X__Y (environment)``; all of them are raised together in one
``ConfigError``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import ssl
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from importer.errors import ConfigError
from importer.readers.options import ReadLimits

if TYPE_CHECKING:
    from importer.servicenow.settings import ClientSettings

ENV_PREFIX = "IMPORTER_"
ENV_CONFIG_PATH = "IMPORTER_CONFIG"
DEFAULT_CONFIG_NAME = "importer.toml"
PASSWORD_CREDENTIAL = "servicenow-password"
CLIENT_SECRET_CREDENTIAL = "servicenow-client-secret"

_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class InstanceConfig(_Section):
    """How to reach the ServiceNow instance (``url = "sandbox"`` is the embedded emulator)."""

    url: str = "sandbox"
    auth: Literal["basic", "oauth"] = "basic"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    grant: Literal["password", "client_credentials"] = "password"
    timeout_s: float = Field(default=30.0, gt=0)
    verify_tls: bool | str = True  # False, True, or a CA bundle path
    allow_insecure_http: bool = False  # True: a plain http:// URL to another host is accepted
    max_request_bytes: int = Field(default=5_000_000, ge=10_000, le=25_000_000)
    retry_attempts: int = Field(default=6, ge=1)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    retry_backoff_max_s: float = Field(default=30.0, ge=0)
    # An import set not processed this long after it was accepted: its rows end as error (a
    # later poll that finds it processed replaces them with the real results).
    transform_timeout_s: float = Field(default=3600.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip()
        if value == "sandbox":
            return value
        parts = urllib.parse.urlsplit(value)
        if parts.username is not None or parts.password is not None:
            # Never echo the URL: it holds a secret.
            raise ValueError("must not contain credentials; set username and password instead")
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(
                f'must be "sandbox" or an address like https://acme.service-now.com, got {value!r}'
            )
        if parts.query or parts.fragment:
            raise ValueError(
                f"must be the instance's root, without a query, like https://acme.service-now.com; "
                f"got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("verify_tls", mode="before")
    @classmethod
    def _check_verify_tls(cls, value: object) -> object:
        # From the environment every value is text: "false" means False, not a CA bundle called "false".
        if not isinstance(value, bool | str):
            raise ValueError("must be true, false or the path of a CA bundle file")
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
            if not value.strip():
                raise ValueError("must be true, false or the path of a CA bundle file")
            if not Path(value).expanduser().is_file():
                raise ValueError(f"CA bundle {value!r} is not a file (use true, false or a CA bundle path)")
            return str(Path(value).expanduser())
        return value

    @property
    def is_sandbox(self) -> bool:
        return self.url == "sandbox"

    def password_value(self) -> str | None:
        """The password in clear, from whichever source ``load_config`` found it."""
        if self.password is not None:
            return self.password.get_secret_value()
        return _read_secret_file(self.password_file) if self.password_file else None

    def client_secret_value(self) -> str | None:
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        return _read_secret_file(self.client_secret_file) if self.client_secret_file else None

    def client_settings(self) -> ClientSettings:
        """The instance client's settings, secrets in clear: a plain value, trusted because this
        section was validated by ``load_config`` (or ``check_client_settings``)."""
        from importer.servicenow.settings import ClientSettings

        return ClientSettings(
            url=self.url,
            auth=self.auth,
            username=self.username,
            password=self.password_value(),
            client_id=self.client_id,
            client_secret=self.client_secret_value(),
            grant=self.grant,
            timeout_s=self.timeout_s,
            verify_tls=self.verify_tls,
            retry_attempts=self.retry_attempts,
            retry_backoff_s=self.retry_backoff_s,
            retry_backoff_max_s=self.retry_backoff_max_s,
        )


class PathsConfig(_Section):
    """Where files live. Relative paths are relative to the current working directory
    (a systemd unit sets it with ``WorkingDirectory=``/``StateDirectory=``), not to the config file."""

    inbox: Path = Path("inbox")
    mappings: Path = Path("mappings")
    state: Path = Path("var")
    ledger: str | None = None  # any SQLAlchemy URL; default sqlite:///<state>/ledger.db
    outbox: str = "outbox"  # answers for the people who drop files; "" = none

    @field_validator("inbox", "mappings", "state")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def outbox_dir(self) -> Path | None:
        """Where reports and refusals are answered, or None when ``outbox = ""`` turns that off."""
        return Path(self.outbox).expanduser() if self.outbox.strip() else None

    @field_validator("ledger")
    @classmethod
    def _check_ledger(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(
                f"must be an SQLAlchemy URL like sqlite:///var/ledger.db or "
                f"postgresql+psycopg://user@host/db, got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _default_ledger(self) -> PathsConfig:
        if self.ledger is None:
            self.ledger = f"sqlite:///{self.state.as_posix()}/ledger.db"
        return self

    @property
    def ledger_url(self) -> str:
        assert self.ledger is not None  # always set by the validator
        return self.ledger

    @property
    def processing(self) -> Path:
        return self.state / "processing"

    @property
    def archive(self) -> Path:
        return self.state / "archive"

    @property
    def failed(self) -> Path:
        return self.state / "failed"

    @property
    def reports(self) -> Path:
        return self.state / "reports"


class DaemonConfig(_Section):
    settle_s: float = Field(default=2.0, ge=0)
    poll_s: float = Field(default=10.0, gt=0)
    rescan_s: float = Field(default=60.0, gt=0)
    watch: bool = True  # False: poll/rescan only, for shares where file events never arrive
    max_concurrent_files: int = Field(default=2, ge=1)
    retention_days: int = Field(default=90, ge=1)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    host_id: str | None = None  # this host's name in a shared ledger; default: the host name
    # A file whose processing the process died in this many times in a row is set aside in failed/.
    max_file_attempts: int = Field(default=2, ge=1)


SMTP_PASSWORD_CREDENTIAL = "smtp-password"
_DEFAULT_SMTP_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def _split_addresses(value: object) -> object:
    # From the environment a list is one text: "a@example.com, b@example.com".
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class NotifyMappingConfig(_Section):
    """``[notify.mappings.<name>]``: who hears about one mapping's files instead of the defaults."""

    to: list[str] | None = None
    webhook_url: SecretStr | None = None
    enabled: bool = True  # false: no message at all for this mapping's files

    @field_validator("to", mode="before")
    @classmethod
    def _split_to(cls, value: object) -> object:
        return _split_addresses(value)


class NotifyConfig(_Section):
    """Optional messages when a file finishes or is refused: e-mail over SMTP and/or a webhook.

    Sent from a background thread, retried with backoff, never blocking or failing an import."""

    to: list[str] = Field(default_factory=list)
    from_address: str = "importer@localhost"
    smtp_host: str | None = None
    smtp_port: int | None = Field(default=None, ge=1, le=65535)  # default: 587, 465 (tls) or 25 (none)
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_verify_tls: bool | str = True  # false, or a CA bundle path (a relay with an in-house CA)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_password_file: Path | None = None
    webhook_url: SecretStr | None = None  # a Teams/Slack incoming webhook URL holds a token
    attach_html: bool = True
    timeout_s: float = Field(default=10.0, gt=0)
    retry_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    retry_backoff_max_s: float = Field(default=120.0, ge=0)
    mappings: dict[str, NotifyMappingConfig] = Field(default_factory=dict)

    @field_validator("to", mode="before")
    @classmethod
    def _split_to(cls, value: object) -> object:
        return _split_addresses(value)

    @field_validator("smtp_verify_tls", mode="before")
    @classmethod
    def _check_smtp_verify_tls(cls, value: object) -> object:
        # As instance.verify_tls: true, false, or a CA bundle file ("false" from the environment).
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        if isinstance(value, str) and not Path(value).expanduser().is_file():
            raise ValueError(f"CA bundle {value!r} is not a file (use true, false or a CA bundle path)")
        return str(Path(value).expanduser()) if isinstance(value, str) else value

    def tls_context(self) -> ssl.SSLContext:
        if isinstance(self.smtp_verify_tls, str):
            return ssl.create_default_context(cafile=self.smtp_verify_tls)
        context = ssl.create_default_context()
        if not self.smtp_verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def enabled(self) -> bool:
        return bool(self.smtp_host or self.webhook_url or any(m.webhook_url for m in self.mappings.values()))

    @property
    def port(self) -> int:
        return self.smtp_port or _DEFAULT_SMTP_PORTS[self.smtp_security]

    def smtp_password_value(self) -> str | None:
        if self.smtp_password is not None:
            return self.smtp_password.get_secret_value()
        return _read_secret_file(self.smtp_password_file) if self.smtp_password_file else None


class LimitsConfig(_Section):
    """What one input may cost (see ``importer.readers.options.ReadLimits``)."""

    max_cell_chars: int = Field(default=32_767, ge=1, le=10_000_000)
    max_json_depth: int = Field(default=32, ge=2, le=1000)
    max_number_digits: int = Field(default=40, ge=1, le=10_000)
    xlsx_max_uncompressed_mb: int = Field(default=1024, ge=1)
    xlsx_max_ratio: int = Field(default=100, ge=2)
    reader_memory_mb: int = Field(default=1024, ge=128)
    read_stall_s: float = Field(default=120.0, gt=0)
    pattern_timeout_s: float = Field(default=0.25, gt=0, le=60)

    def read_limits(self) -> ReadLimits:
        return ReadLimits(**self.model_dump())


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance: InstanceConfig = Field(default_factory=InstanceConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    source: Path | None = None  # the config file loaded, None when every default applies
    warnings: list[str] = Field(default_factory=list)  # allowed but unsafe; said at every start


_SECTIONS: dict[str, type[_Section]] = {
    "instance": InstanceConfig,
    "paths": PathsConfig,
    "daemon": DaemonConfig,
    "notify": NotifyConfig,
    "limits": LimitsConfig,
}
_SECRET_KEYS = {
    ("instance", "password"),
    ("instance", "client_secret"),
    ("notify", "smtp_password"),
    ("notify", "webhook_url"),
    ("notify", "mappings"),
}


# --- loading ---------------------------------------------------------------------------------------


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, require_secrets: bool = True
) -> Config:
    """Read the config file (if any), apply environment overrides and secrets, validate everything.

    ``require_secrets=False``: for commands that only read the ledger (``status``, ``report``,
    ``check`` without ``--remote``): a missing or unreadable instance secret is not an error.
    ``Config.warnings`` lists what is allowed but unsafe (see ``security_warnings``)."""
    env = os.environ if env is None else env
    config_path = _find_config_file(path, env)
    where = str(config_path) if config_path else "config"
    problems: list[str] = []

    file_data: dict[str, Any] = {}
    if config_path is not None:
        file_data = _read_toml(config_path)

    raw: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    origin: dict[tuple[str, str], str] = {}  # (section, key) -> where the value came from
    for section, table in file_data.items():
        if section not in _SECTIONS:
            problems.append(f"{where}: {section}: {_unknown_section(section, table)}")
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: {section}: must be a table ([{section}]), not a single value")
            continue
        for key, value in table.items():
            if key not in _SECTIONS[section].model_fields:
                problems.append(f"{where}: {section}.{key}: unknown key{_did_you_mean(key, section)}")
                continue
            raw[section][key] = value
            origin[(section, key)] = where

    problems.extend(_apply_env_overrides(env, raw, origin))

    sections: dict[str, _Section] = {}
    for name, model in _SECTIONS.items():
        section_obj, section_problems = _validate_section(name, model, raw[name], origin, where)
        sections[name] = section_obj
        problems.extend(section_problems)

    instance, paths, daemon = sections["instance"], sections["paths"], sections["daemon"]
    limits = sections["limits"]
    assert isinstance(instance, InstanceConfig)
    assert isinstance(paths, PathsConfig)
    assert isinstance(daemon, DaemonConfig)
    assert isinstance(limits, LimitsConfig)
    instance, secret_problems = _resolve_secrets(instance, env, where)
    if require_secrets:
        problems.extend(secret_problems)
    problems.extend(_cross_check_instance(instance, where, require_secrets=require_secrets))
    notify = sections["notify"]
    assert isinstance(notify, NotifyConfig)
    notify, notify_problems = _resolve_notify(notify, env, where)
    problems.extend(notify_problems)

    if problems:
        raise ConfigError(problems[0], problems=problems, path=str(config_path) if config_path else None)
    config = Config(
        instance=instance, paths=paths, daemon=daemon, notify=notify, limits=limits, source=config_path
    )
    config.warnings = security_warnings(config, file_data)
    return config


def check_client_settings(values: Mapping[str, Any], where: str = "client settings") -> ClientSettings:
    """Settings for a client built by hand (not from a config file: tests, tools), checked by the
    same rules as ``[instance]`` in a config file; every problem at once, each as
    ``<where>: instance.<key>: <what is wrong>``."""
    instance, problems = _validate_section("instance", InstanceConfig, dict(values), {}, where)
    assert isinstance(instance, InstanceConfig)
    problems.extend(_cross_check_instance(instance, where))
    if problems:
        raise ConfigError(problems[0], problems=problems)
    return instance.client_settings()


def _find_config_file(path: Path | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} not found (given with --config)")
        return Path(path)
    from_env = env.get(ENV_CONFIG_PATH)
    if from_env:
        if not Path(from_env).is_file():
            raise ConfigError(f"config file {from_env!r} not found (named by ${ENV_CONFIG_PATH})")
        return Path(from_env)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the config file is not UTF-8 text ({exc.reason})") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line N, column M)".
        raise ConfigError(f"{path}: invalid TOML: {exc}", problems=[f"{path}: invalid TOML: {exc}"]) from exc


def _apply_env_overrides(
    env: Mapping[str, str], raw: dict[str, dict[str, Any]], origin: dict[tuple[str, str], str]
) -> list[str]:
    problems = []
    for var in sorted(env):
        if not var.upper().startswith(ENV_PREFIX) or "__" not in var:
            continue  # IMPORTER_CONFIG, IMPORTER_TEST_PG_URL, ... are not overrides
        where = f"{var} (environment)"
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            hint = difflib.get_close_matches(section, _SECTIONS, n=1)
            did_you_mean = f"; did you mean {ENV_PREFIX}{hint[0].upper()}__{key.upper()}?" if hint else ""
            problems.append(
                f"{where}: unknown section {section!r} (sections: {', '.join(_SECTIONS)}){did_you_mean}"
            )
            continue
        fields = _SECTIONS[section].model_fields
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            did_you_mean = f"; did you mean {ENV_PREFIX}{section.upper()}__{hint[0].upper()}?" if hint else ""
            problems.append(f"{where}: unknown key {section}.{key}{did_you_mean}")
            continue
        value: Any = env[var]
        if value == "" and fields[key].default is None:
            value = None  # an empty variable unsets an optional key
        raw[section][key] = value
        origin[(section, key)] = where
    return problems


def _validate_section(
    name: str,
    model: type[_Section],
    data: dict[str, Any],
    origin: dict[tuple[str, str], str],
    where: str,
) -> tuple[_Section, list[str]]:
    """Validate one section; on errors, return the problems and the section with the bad keys at
    their defaults, so that cross-field checks still run and report everything at once."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        problems = []
        bad_keys = set()
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            if key in bad_keys:
                continue  # a union reports once per member; the first says enough
            bad_keys.add(key)
            source = origin.get((name, key), where)
            label = f"{name}.{key}" if key else name
            message = _describe_error(error, secret=(name, key) in _SECRET_KEYS)
            if source.endswith("(environment)"):
                problems.append(f"{source}: {message}")
            else:
                problems.append(f"{source}: {label}: {message}")
        try:
            fallback = model.model_validate({k: v for k, v in data.items() if k not in bad_keys})
        except ValidationError:
            fallback = model()
        return fallback, problems


def _describe_error(error: Any, secret: bool) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = "" if secret else f", got {_short(value)}"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx['gt'])}{got}"
    if kind == "greater_than_equal":
        return f"must be at least {_number(ctx['ge'])}{got}"
    if kind == "less_than_equal":
        return f"must be at most {_number(ctx['le'])}{got}"
    if kind == "less_than":
        return f"must be less than {_number(ctx['lt'])}{got}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number{got}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false{got}"
    if kind in ("string_type", "path_type"):
        return f"must be a string{got}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}{got}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    message = str(error["msg"])
    return message[:1].lower() + message[1:]


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:_}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_section(section: str, value: object) -> str:
    if not isinstance(value, dict):
        for name, model in _SECTIONS.items():
            if section in model.model_fields:
                return f"unknown key; did you mean {name}.{section} (under [{name}])?"
    hint = difflib.get_close_matches(section, _SECTIONS, n=1)
    known = ", ".join(f"[{name}]" for name in _SECTIONS)
    return f"unknown section{f'; did you mean [{hint[0]}]?' if hint else ''} (sections: {known})"


def _did_you_mean(key: str, section: str) -> str:
    hint = difflib.get_close_matches(key, _SECTIONS[section].model_fields, n=1)
    if hint:
        return f"; did you mean {section}.{hint[0]}?"
    for other, model in _SECTIONS.items():
        if key in model.model_fields:
            return f"; it belongs under [{other}]"
    return ""


# --- secrets ---------------------------------------------------------------------------------------


def _read_secret_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def _resolve_secrets(
    instance: InstanceConfig, env: Mapping[str, str], where: str
) -> tuple[InstanceConfig, list[str]]:
    """Fill password / client_secret from (first found) the value, the *_file, or the systemd credential."""
    problems: list[str] = []
    update: dict[str, SecretStr] = {}
    credentials_dir = env.get("CREDENTIALS_DIRECTORY")
    for key, file_key, credential in (
        ("password", "password_file", PASSWORD_CREDENTIAL),
        ("client_secret", "client_secret_file", CLIENT_SECRET_CREDENTIAL),
    ):
        if getattr(instance, key) is not None:
            continue
        file_path: Path | None = getattr(instance, file_key)
        label = f"{where}: instance.{file_key}"
        if file_path is None and credentials_dir:
            candidate = Path(credentials_dir) / credential
            if candidate.is_file():
                file_path, label = candidate, f"$CREDENTIALS_DIRECTORY/{credential}"
        if file_path is None:
            continue
        try:
            secret = _read_secret_file(file_path)
        except OSError as exc:
            problems.append(f"{label}: cannot read {str(file_path)!r}: {exc.strerror or exc}")
            continue
        except UnicodeDecodeError:
            problems.append(f"{label}: {str(file_path)!r} is not UTF-8 text")
            continue
        if not secret:
            problems.append(f"{label}: {str(file_path)!r} is empty")
            continue
        update[key] = SecretStr(secret)
    return (instance.model_copy(update=update) if update else instance), problems


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _cross_check_instance(instance: InstanceConfig, where: str, *, require_secrets: bool = True) -> list[str]:
    problems = []
    url = urllib.parse.urlsplit(instance.url) if not instance.is_sandbox else None
    insecure = url is not None and url.scheme == "http" and not instance.allow_insecure_http
    if insecure and url is not None and not _is_loopback(url.hostname or ""):
        problems.append(
            f"{where}: instance.url: {instance.url} is plain http:// to another host: the password "
            "and every row would cross the network unencrypted; use https://, or set "
            "allow_insecure_http = true in [instance] if that network is private and trusted"
        )
    secret_hint = {
        "password": "set IMPORTER_INSTANCE__PASSWORD, instance.password_file, "
        f"or a systemd credential {PASSWORD_CREDENTIAL}",
        "client_secret": "set IMPORTER_INSTANCE__CLIENT_SECRET, instance.client_secret_file, "
        f"or a systemd credential {CLIENT_SECRET_CREDENTIAL}",
    }
    if instance.retry_backoff_max_s < instance.retry_backoff_s:
        problems.append(
            f"{where}: instance.retry_backoff_max_s: must be at least retry_backoff_s "
            f"({instance.retry_backoff_s})"
        )
    if instance.is_sandbox or not require_secrets:
        return problems
    if instance.auth == "basic" or instance.grant == "password":
        why = 'auth = "basic"' if instance.auth == "basic" else 'auth = "oauth" with grant = "password"'
        if not instance.username:
            problems.append(f"{where}: instance.username: required with {why}")
        if instance.password is None:
            problems.append(f"{where}: instance.password: required with {why}; {secret_hint['password']}")
    if instance.auth == "oauth":
        if not instance.client_id:
            problems.append(f'{where}: instance.client_id: required with auth = "oauth"')
        if instance.client_secret is None:
            problems.append(
                f'{where}: instance.client_secret: required with auth = "oauth"; '
                f"{secret_hint['client_secret']}"
            )
    return problems


def _resolve_notify(
    notify: NotifyConfig, env: Mapping[str, str], where: str
) -> tuple[NotifyConfig, list[str]]:
    """The SMTP password from the same sources as the instance's (value, *_file, systemd credential
    ``smtp-password``), and the checks that need several keys at once."""
    problems: list[str] = []
    credentials_dir = env.get("CREDENTIALS_DIRECTORY")
    if notify.smtp_password is None:
        file_path, label = notify.smtp_password_file, f"{where}: notify.smtp_password_file"
        if (
            file_path is None
            and credentials_dir
            and (Path(credentials_dir) / SMTP_PASSWORD_CREDENTIAL).is_file()
        ):
            file_path = Path(credentials_dir) / SMTP_PASSWORD_CREDENTIAL
            label = f"$CREDENTIALS_DIRECTORY/{SMTP_PASSWORD_CREDENTIAL}"
        if file_path is not None:
            try:
                secret = _read_secret_file(file_path)
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(
                    f"{label}: cannot read {str(file_path)!r}: {getattr(exc, 'strerror', None) or exc}"
                )
            else:
                if secret:
                    notify = notify.model_copy(update={"smtp_password": SecretStr(secret)})
                else:
                    problems.append(f"{label}: {str(file_path)!r} is empty")
    addressed = bool(notify.to) or any(m.to for m in notify.mappings.values())
    if addressed and not notify.smtp_host:
        problems.append(f"{where}: notify.smtp_host: required when notify.to (or a mapping's to) is set")
    if notify.smtp_host and not addressed:
        problems.append(
            f"{where}: notify.to: set at least one address to send e-mail to (or unset smtp_host)"
        )
    if notify.smtp_user and notify.smtp_password is None:
        problems.append(
            f"{where}: notify.smtp_password: required with smtp_user; set IMPORTER_NOTIFY__SMTP_PASSWORD, "
            f"notify.smtp_password_file, or a systemd credential {SMTP_PASSWORD_CREDENTIAL}"
        )
    for address in [*notify.to, *(a for m in notify.mappings.values() for a in m.to or [])]:
        if "@" not in address or any(ch.isspace() for ch in address):
            problems.append(f"{where}: notify.to: {address!r} is not an e-mail address")
    for url in [notify.webhook_url, *(m.webhook_url for m in notify.mappings.values())]:
        if url is not None and not url.get_secret_value().startswith(("https://", "http://")):
            problems.append(f"{where}: notify.webhook_url: must start with https:// or http://")
    if notify.retry_backoff_max_s < notify.retry_backoff_s:
        problems.append(
            f"{where}: notify.retry_backoff_max_s: must be at least retry_backoff_s "
            f"({notify.retry_backoff_s})"
        )
    return notify, problems


# --- what is allowed but unsafe --------------------------------------------------------------------


def security_warnings(config: Config, file_data: Mapping[str, Any]) -> list[str]:
    """Allowed settings that weaken security, one line each naming the fix; said at every start."""
    warnings = []
    instance = config.instance
    if not instance.is_sandbox and instance.verify_tls is False:
        warnings.append(
            "instance.verify_tls = false: the instance's TLS certificate is not checked, so anyone on "
            "the network path can pose as it and read the password; set verify_tls = true, or the "
            "path of your CA bundle"
        )
    if not instance.is_sandbox and instance.url.startswith("http://") and instance.allow_insecure_http:
        warnings.append(
            f"instance.url {instance.url} is plain http:// (allow_insecure_http = true): the password "
            "and every row cross the network unencrypted"
        )
    secret_files: list[Path] = []
    if config.source is not None and _holds_secret(file_data):
        secret_files.append(config.source)
    for path in (instance.password_file, instance.client_secret_file, config.notify.smtp_password_file):
        if path is not None:
            secret_files.append(path)
    for path in secret_files:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        readers = [who for who, bits in (("group", stat.S_IRWXG), ("others", stat.S_IRWXO)) if mode & bits]
        if readers:
            warnings.append(
                f"{path} holds a secret and {' and '.join(readers)} may read it (mode "
                f"{stat.S_IMODE(mode):o}): run `chmod 600 {path}` (owned by the service user), or "
                "move the secret to a systemd credential (LoadCredential=)"
            )
    return warnings


def _holds_secret(file_data: Mapping[str, Any]) -> bool:
    for section, key in _SECRET_KEYS:
        table = file_data.get(section)
        if isinstance(table, dict) and table.get(key):
            return True
    return False
