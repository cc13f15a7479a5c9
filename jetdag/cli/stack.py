"""`jetdag up`, the service commands, `jetdag worker` and `jetdag settings`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from jetdag.cli.output import err, is_tty, print_json, print_table
from shared.settings import NatsSettings, SettingsError, StackSettings, effective_settings, load, markdown_table

__all__ = ["COMMANDS"]


@click.command(
    short_help="Run the whole stack in the foreground (embedded nats-server unless NATS_URL is set).",
    help="Run the whole stack in the foreground: an embedded nats-server (unless NATS_URL is set), the registry, "
    "the scheduler, the REST gateway and JETDAG_WORKERS workers, with prefixed logs. Ctrl-C stops everything in "
    "order. Configured by environment variables (jetdag settings).",
)
def up() -> None:
    from jetdag.launcher import main as launch

    raise SystemExit(launch([]))


@click.command(
    short_help="Run the registry service.",
    help="Run the worker registry service (KV bucket of workers, heartbeats, reaping).",
)
def registry() -> None:
    from services.registry.__main__ import main as run

    run()


@click.command(
    short_help="Run the scheduler service.",
    help="Run the scheduler service (executions, the job stream, retries, checkpoints).",
)
def scheduler() -> None:
    from services.scheduler.__main__ import main as run

    run()


@click.command(help="Run the REST gateway (JETDAG_HOST:JETDAG_PORT).")
def gateway() -> None:
    from services.gateway.__main__ import main as run

    run()


# The worker's options are parsed by services/worker/options.py (also `python -m services.worker`), so both
# entry points share one parser and one --help: everything after `worker` is handed to it untouched.
@click.command(
    short_help="Run a worker with the handlers of the given modules (see jetdag worker --help).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args: tuple[str, ...]) -> None:
    from services.worker.__main__ import main as run

    run(list(args))


@click.command(
    short_help="Print every environment variable: value in effect, default (--markdown: README table).",
    help="Every environment variable: the value in effect here, its default, and what it means.",
)
@click.option("--markdown", is_flag=True, help="The README's table of defaults and meanings instead.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
def settings(markdown: bool, as_json: bool) -> None:
    if markdown:
        click.echo(markdown_table())
        return
    rows = effective_settings()
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
    else:
        headers = ["variable", "value", "default", "meaning"] if is_tty() else ["variable", "value", "default"]
        cells = []
        for r in rows:
            cell = [r.var, r.value if r.value else "(empty)", r.default if r.default else "(empty)"]
            if r.from_env and is_tty():
                cell[1] = f"[bold]{cell[1]}[/bold]"
            cells.append([*cell, r.doc] if is_tty() else cell)
        print_table(headers, cells)
    errors = [r.error for r in rows if r.error]
    for error in errors:
        err.print(f"jetdag: {error}")
    if errors:
        raise SystemExit(2)


@click.command(
    "nats-config",
    short_help="Print the NATS authorization block of jetdag's roles for your own cluster.",
    help="Print the nats-server authorization block of jetdag's roles (gateway, registry, scheduler, worker, "
    "operator): their nkeys and least-privilege permissions for the namespace JETDAG_NAMESPACE. The role seeds "
    "are generated in --dir on first use (mode 0600) and reused; give each service its role's seed with "
    "NATS_NKEY (docs/security.md).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the role seeds are kept (default: $JETDAG_DATA_DIR/credentials).",
)
@click.option("--json", "as_json", is_flag=True, help="The roles and their permissions as JSON instead.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file, not stdout.")
def nats_config(directory: Path | None, as_json: bool, out: Path | None) -> None:
    from jetdag.natsauth import nats_config as render
    from shared.subjects import Names

    try:
        names = Names(load(NatsSettings).namespace)
        directory = directory or Path(load(StackSettings).data_dir) / "credentials"
        text, keys = render(directory, names, as_json=as_json)
    except (SettingsError, ValueError, OSError) as exc:
        err.print(f"jetdag nats-config: {exc}")
        raise SystemExit(2) from None
    if out is not None:
        out.write_text(text)
    else:
        click.echo(text, nl=False)
    seeds = ", ".join(f"{role}={key.seed_file}" for role, key in keys.items())
    click.echo(f"jetdag nats-config: the seeds (NATS_NKEY of each role): {seeds}", err=True)


@click.command(
    "api-token",
    short_help="Make a REST API token and the entry that configures it.",
    help="Make a new random REST API token for NAME with a scope (read: every GET; write: also submit, cancel, "
    "retry; admin: also the queue and worker registration). Prints the token, which only you keep, and the "
    "entry for JETDAG_API_TOKENS or a line of JETDAG_API_TOKENS_FILE, which holds only its SHA-256.",
)
@click.argument("name")
@click.option(
    "--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True, help="What it may do."
)
def api_token(name: str, scope: str) -> None:
    from services.gateway.auth import AuthConfigError, hash_token, new_token, parse_tokens

    token = new_token()
    entry = f"{name}:{scope}:{hash_token(token)}"
    try:
        parse_tokens(entry, "NAME")
    except AuthConfigError as exc:
        err.print(f"jetdag api-token: {exc}")
        raise SystemExit(2) from None
    click.echo(f"token: {token}")
    click.echo(f"entry: {entry}")


COMMANDS = [up, registry, scheduler, gateway, worker, settings, nats_config, api_token]
