"""Wiring: config -> ledger, instance client (or the embedded sandbox), mappings, Importer.

Kept apart from cli.py so the daemon and the tests build the same thing the commands do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from importer.config import Config
from importer.isolated import start_reading_server
from importer.ledger import Ledger
from importer.mapping import Mapping
from importer.mapping_files import load_mappings
from importer.notifications import Notifier
from importer.pipeline import Importer
from importer.servicenow import ClientSettings, InstanceClient

log = logging.getLogger("importer")


@contextlib.contextmanager
def instance_client(
    config: Config,
    stop_event: threading.Event | None = None,
    on_retry: Callable[[str, int | None], None] | None = None,
) -> Iterator[InstanceClient]:
    """A client for the configured instance; for ``url = "sandbox"`` the embedded emulator is
    started in this process for as long as the client is used."""
    if not config.instance.is_sandbox:
        with InstanceClient(
            config.instance.client_settings(), stop_event=stop_event, on_retry=on_retry
        ) as client:
            yield client
        return
    from importer.sandbox import SandboxServer
    from importer.sandbox.defaults import IMPORT_PASSWORD, IMPORT_USER

    with SandboxServer() as server:
        log.info("using the embedded sandbox instance at %s", server.url)
        settings = ClientSettings(
            url=server.url,
            auth="basic",
            username=IMPORT_USER,
            password=IMPORT_PASSWORD,
            timeout_s=config.instance.timeout_s,
            retry_attempts=config.instance.retry_attempts,
            retry_backoff_s=config.instance.retry_backoff_s,
            retry_backoff_max_s=config.instance.retry_backoff_max_s,
        )
        with InstanceClient(settings, stop_event=stop_event, on_retry=on_retry) as client:
            yield client


def open_ledger(config: Config) -> Ledger:
    return Ledger(config.paths.ledger_url, host=config.daemon.host_id)


def open_mappings(config: Config) -> dict[str, Mapping]:
    return load_mappings(config.paths.mappings)


@dataclass
class Runtime:
    config: Config
    ledger: Ledger
    client: InstanceClient
    importer: Importer


@contextlib.contextmanager
def runtime(
    config: Config,
    stop_event: threading.Event | None = None,
    on_retry: Callable[[str, int | None], None] | None = None,
    on_notification: Callable[[str, str], None] | None = None,
) -> Iterator[Runtime]:
    start_reading_server()  # in the background while the ledger and the instance are set up
    mappings = open_mappings(config)
    ledger = open_ledger(config)
    notifier = Notifier(config.notify, on_notification).start() if config.notify.enabled else None
    try:
        with instance_client(config, stop_event, on_retry) as client:
            importer = Importer(config, ledger, client, mappings, stop_event=stop_event, notifier=notifier)
            yield Runtime(config, ledger, client, importer)
    finally:
        if notifier is not None:
            notifier.close()  # what is queued gets a last, bounded chance
        ledger.close()
