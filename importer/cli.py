"""The command line: parse options, call the service, map errors to exit codes in one place."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from importer import __version__
from importer.config import Config, load_config
from importer.errors import ImporterError, UsageError
from importer.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_ROWS_FAILED, exit_code_for
from importer.ledger import BatchState, FileSummary, Ledger
from importer.ledger.states import FAILED_ROW_STATES, FINAL_FILE_STATES, UNSENT_FILE_STATES

log = logging.getLogger("importer")
F = TypeVar("F", bound=Callable[..., Any])


class State:
    def __init__(self, config_path: Path | None, debug: bool) -> None:
        self.config_path = config_path
        self.debug = debug
        self._config: Config | None = None
        self.require_secrets = True  # False: a command that only reads the ledger

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, require_secrets=self.require_secrets)
            for warning in self._config.warnings:  # at every start, to the terminal or the journal
                click.echo(f"importer: warning: {warning}", err=True)
        return self._config


def _fail(exc: BaseException, debug: bool) -> NoReturn:
    """The one place errors become messages and exit codes."""
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ImporterError):
        click.echo(f"importer: {exc}", err=True)
        sys.exit(exc.exit_code)
    click.echo(
        f"importer: unexpected {exc.__class__.__name__}: {exc}\n"
        "This is a bug or an environment problem; run again with --debug for the details.",
        err=True,
    )
    sys.exit(EXIT_FAILURE)


def _configure_logging(debug: bool) -> None:
    from importer.logs import OneLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="importer.toml (default: $IMPORTER_CONFIG, else ./importer.toml, else built-in defaults).",
)
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.version_option(__version__, prog_name="importer")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool) -> None:
    """Drop CSV, Excel and JSON files into a folder; they reach ServiceNow through Import Set
    transforms, and every row's outcome is recorded."""
    _configure_logging(debug)
    ctx.obj = State(config_path, debug)


def _print_summaries(
    summaries: list[FileSummary],
    as_json: bool,
    ledger: Ledger | None = None,
    answer: Callable[[FileSummary], str] | None = None,
) -> None:
    if as_json:
        click.echo(json.dumps([s.as_json() for s in summaries], indent=2))
        return
    if not summaries:
        click.echo("no files yet")
        return
    for s in summaries:
        counts = ", ".join(f"{state} {n}" for state, n in sorted(s.rows.items())) or "no rows"
        flight = f", {s.batches_in_flight} batches in flight" if s.batches_in_flight else ""
        click.echo(
            f"#{s.file.id:<5} {s.file.name:<32} {s.file.mapping or '-':<16} {s.file.state:<17} "
            f"{counts}{flight}"
        )
        if s.waiting_on and s.waiting_since:
            waited = max(0, int((datetime.now(UTC) - s.waiting_since).total_seconds()))
            click.echo(f"       waiting {_duration(waited)} for the transform of import set {s.waiting_on}")
        if answer is not None and s.file.state in FINAL_FILE_STATES:
            click.echo(f"       answer: {answer(s)}")
        elif s.file.error:
            click.echo(f"       {s.file.error}")
        if ledger is not None and any(s.rows.get(state) for state in FAILED_ROW_STATES):
            shown = 0
            for entry in ledger.report(s.file.id):
                if entry["state"] in FAILED_ROW_STATES:
                    click.echo(f"       row {entry['source_row']}: {entry['state']}: {entry['message']}")
                    shown += 1
                    if shown == 10:
                        click.echo(f"       ... see `importer report {s.file.id}` for every row")
                        break


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _progress(enabled: bool) -> Any:
    from importer.pipeline import Progress

    if not enabled:
        return None, Progress()
    from tqdm import tqdm

    sent = tqdm(desc="rows sent", unit="row", file=sys.stderr, position=0)
    done = tqdm(desc="rows with results", unit="row", file=sys.stderr, position=1)
    return (sent, done), Progress(rows_sent=sent.update, rows_finished=done.update)


def _import_files(
    state: State,
    paths: list[Path],
    mapping: str | None,
    wait: bool,
    as_json: bool,
    rerun: tuple[int, bool] | None = None,
) -> int:
    from importer.app import runtime

    bars, progress = _progress(sys.stderr.isatty() and not as_json)
    with runtime(state.config) as rt:
        if mapping is not None and mapping not in rt.importer.mappings:
            raise UsageError(
                f"--mapping {mapping}: no such mapping; known: {', '.join(sorted(rt.importer.mappings))}"
            )
        if rerun is not None:
            file_ids = [rerun_file(rt, *rerun)]
        else:
            file_ids = [rt.importer.copy_in(path, mapping=mapping) for path in paths]
        to_post = [
            file_id
            for file_id in file_ids
            if (record := rt.ledger.get_file(file_id)) is not None
            and record.state in UNSENT_FILE_STATES
        ]
        # Side by side (one worker per chain group, at most daemon.max_concurrent_files), parked
        # batches retried now: asked for by hand.
        rt.importer.post_files(
            to_post, progress, workers=rt.config.daemon.max_concurrent_files, retry_parked_now=True
        )
        # Only files whose every batch the instance took can finish now; a file left posting (the
        # instance kept refusing) is reported as such, and the same command later resumes it.
        summaries = rt.importer.finish(file_ids, progress, wait=wait)
        if bars:
            for bar in bars:
                bar.close()
        _print_summaries(summaries, as_json, None if as_json else rt.ledger)
        for summary in summaries:
            if summary.file.state in UNSENT_FILE_STATES:
                parked = rt.ledger.batches(summary.file.id, [BatchState.PARKED])
                reason = parked[-1].last_error if parked else "it was interrupted"
                click.echo(
                    f"importer: file {summary.file.id} ({summary.file.name}) is not finished: {reason}\n"
                    "Run the same command again to resume it; nothing is sent twice.",
                    err=True,
                )
        return exit_code_for(summaries, waited=wait)


def rerun_file(rt: Any, file_id: int, failed_only: bool) -> int:
    """Record a new run of an archived file, linked to the original."""
    original = rt.ledger.get_file(file_id)
    if original is None:
        raise UsageError(f"no file {file_id} in the ledger; `importer status` lists the files")
    if original.state not in FINAL_FILE_STATES:
        raise UsageError(
            f"file {file_id} ({original.name}) is still being imported ({original.state}); "
            "re-run it once it is done"
        )
    path = Path(original.path)
    if not path.exists():
        raise UsageError(f"file {file_id} ({original.name}) is no longer at {path}; it may have been pruned")
    if failed_only and not rt.ledger.failed_source_rows(file_id):
        raise UsageError(f"file {file_id} has no rows in error or invalid; nothing to re-run")
    from pathlib import PurePosixPath

    relative = PurePosixPath(original.relative_path)
    new_id = rt.importer.record_file(
        path, relative, rerun_of=file_id, rerun_scope="failed" if failed_only else "all"
    )
    if original.mapping:
        rt.ledger.assign_mapping(new_id, original.mapping, original.staging_table)
    return int(new_id)


def _command(func: F) -> F:
    """Run a command body, turning every error into its message and exit code."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            code = func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("importer: interrupted; run the same command again to resume", err=True)
            sys.exit(130)
        except BaseException as exc:
            _fail(exc, ctx.obj.debug if ctx.obj else False)
        sys.exit(code or 0)

    return wrapper  # type: ignore[return-value]


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--mapping", help="Use this mapping (mappings/NAME.yaml) instead of matching file names.")
@click.option(
    "--no-wait", is_flag=True, help="Return once every batch is posted, without waiting for results."
)
@click.option("--json", "as_json", is_flag=True, help="Print the files as JSON.")
@click.pass_obj
@_command
def import_command(
    state: State, paths: tuple[Path, ...], mapping: str | None, no_wait: bool, as_json: bool
) -> int:
    """Import files by hand (they are copied; the originals stay where they are)."""
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    return _import_files(state, list(paths), mapping, not no_wait, as_json)


@cli.command()
@click.argument("file_id", type=int)
@click.option("--failed-only", is_flag=True, help="Post only the rows in error or invalid.")
@click.option("--no-wait", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_command
def rerun(state: State, file_id: int, failed_only: bool, no_wait: bool, as_json: bool) -> int:
    """Post an archived file again (a new run linked to the original), or only its failed rows."""
    return _import_files(state, [], None, not no_wait, as_json, rerun=(file_id, failed_only))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=20, show_default=True, help="How many recent files.")
@click.pass_obj
@_command
def status(state: State, as_json: bool, limit: int) -> int:
    """Recent files: id, name, mapping, state, rows per state; batches in flight."""
    from importer.app import open_ledger

    state.require_secrets = False  # it only reads the ledger
    from importer.outbox import answer_line

    with open_ledger(state.config) as ledger:
        summaries = ledger.summaries(limit=limit)
        _print_summaries(summaries, as_json, answer=lambda s: answer_line(state.config, s.file, s.rows))
    return EXIT_OK


@cli.command()
@click.argument("file_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="Write here instead of standard output.")
@click.pass_obj
@_command
def report(state: State, file_id: int, fmt: str, output: Path | None) -> int:
    """One line per source row and transform map (a re-run's rows follow the original's)."""
    from importer import inbox
    from importer.app import open_ledger
    from importer.ledger import REPORT_COLUMNS

    state.require_secrets = False  # it only reads the ledger

    with open_ledger(state.config) as ledger:
        if ledger.get_file(file_id) is None:
            raise UsageError(f"no file {file_id} in the ledger; `importer status` lists the files")
        runs = [file_id] + [r.id for r in ledger.reruns_of(file_id)]
        entries = (entry for run in runs for entry in ledger.report(run))
        if fmt == "json":
            text = json.dumps(list(entries), indent=2)
            if output:
                output.write_text(text + "\n", encoding="utf-8")
            else:
                click.echo(text)
        elif output:
            inbox.write_report(output, REPORT_COLUMNS, entries)
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS)
            writer.writeheader()
            for entry in entries:
                writer.writerow({k: inbox.excel_safe(v) for k, v in entry.items()})
            click.echo(buffer.getvalue(), nl=False)
    return EXIT_OK


@cli.command()
@click.argument("file_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@click.pass_obj
@_command
def verify(state: State, file_id: int, as_json: bool) -> int:
    """Read back a finished file's target records and compare them with what its rows sent."""
    from importer.app import runtime
    from importer.verify import Verifier

    with runtime(state.config) as rt:
        result = Verifier(rt.ledger, rt.client, rt.importer.mappings).verify_file(file_id)
    if as_json:
        click.echo(json.dumps([d.as_json() for d in result.differences], indent=2))
    else:
        for d in result.differences:
            where = f"{d.target_table}.{d.field}" if d.field else d.target_table
            note = f" ({d.note})" if d.note else ""
            click.echo(f"row {d.source_row}: {where}: sent {d.sent!r}, found {d.found!r}{note}")
        click.echo(result.summary())
    return EXIT_OK if result.ok else EXIT_ROWS_FAILED


@cli.command()
@click.option(
    "--file", "file_path", type=click.Path(path_type=Path), help="Dry-run this file through its mapping."
)
@click.option("--mapping", help="With --file: use this mapping.")
@click.option("--remote", is_flag=True, help="Compare mapping labels with the staging tables' real columns.")
@click.pass_obj
@_command
def check(state: State, file_path: Path | None, mapping: str | None, remote: bool) -> int:
    """Validate config and mappings; dry-run a file; compare labels with the instance."""
    from importer.checks import check_file, check_remote

    state.require_secrets = remote  # only --remote talks to the instance
    config = state.config
    from importer.app import open_mappings

    mappings = open_mappings(config)
    click.echo(
        f"config ok ({config.source or 'built-in defaults'}); {len(mappings)} mappings ok: "
        f"{', '.join(sorted(mappings))}"
    )
    from importer.mapping import pattern_warnings

    for warning in (w for m in sorted(mappings) for w in pattern_warnings(mappings[m])):
        click.echo(f"warning: {warning}")
    code = EXIT_OK
    if file_path is not None:
        code = max(code, check_file(mappings, file_path, mapping, click.echo, config.limits.read_limits()))
    if remote:
        code = max(code, check_remote(config, mappings, click.echo))
    return code


@cli.command()
@click.option("--once", is_flag=True, help="Take what is in the inbox now, wait for every result, exit.")
@click.pass_obj
@_command
def run(state: State, once: bool) -> int:
    """The daemon: watch the inbox, post, poll, record."""
    from importer.daemon import Daemon

    if not state.debug:
        logging.getLogger("importer").setLevel(logging.INFO)
    return Daemon(state.config).run(once=once)


@cli.command()
@click.option("--port", default=8080, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option(
    "--data", type=click.Path(exists=True, path_type=Path), help="Data file (YAML); default: the HR example."
)
@click.pass_obj
@_command
def sandbox(state: State, port: int, data: Path | None) -> int:
    """Serve the embedded ServiceNow emulator for people to try mappings against."""
    from importer.sandbox import SandboxServer

    server = SandboxServer(data=data, port=port)
    server.start()
    click.echo(server.banner())
    sys.stdout.flush()
    server.serve_forever()
    return EXIT_OK


def main() -> None:
    """The ``importer`` program. Once a command is done and nothing but this thread runs, the
    process ends without the interpreter's teardown (freeing every module and object one by one:
    a tenth of a second or more, after the work and its output are complete); the exit handlers
    (log handlers flushed, temporary folders removed) still run first."""
    try:
        cli(prog_name="importer")
    except SystemExit as exc:
        _quick_exit(exc)
        raise


def _quick_exit(exc: SystemExit) -> None:
    """``os._exit`` with ``exc``'s code, as the interpreter's own exit would end; returns
    instead (the usual exit follows) while another thread that is waited for at exit runs."""
    import atexit
    import os
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # what sys.exit("message") would print
        code = 1
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the interpreter would exit 120
        code = code or 120
    os._exit(code or 0)
