"""`jetdag validate` and `jetdag schema`: workflow files checked locally, without a gateway."""

from __future__ import annotations

from pathlib import Path

import click

from jetdag.cli.output import err, out, print_json
from jetdag.workflow import SCHEMA_PATH, WorkflowError, load_workflow

__all__ = ["COMMANDS", "EXIT_USAGE"]

EXIT_USAGE = 2
"""Usage and validation errors, as click's own usage errors."""


@click.command(short_help="Check workflow files locally: every problem with its file and line.")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the requests the files would submit.")
def validate(files: tuple[Path, ...], as_json: bool) -> None:
    """Check FILES (YAML or JSON workflows) the way `jetdag submit` does, without sending anything."""
    problems: list[str] = []
    requests = []
    for path in files:
        try:
            requests.append(load_workflow(path))
        except WorkflowError as exc:
            problems.extend(exc.problems)
    for problem in problems:
        err.print(problem)
    if problems:
        raise SystemExit(EXIT_USAGE)
    if as_json:
        print_json(requests)
    else:
        for path, request in zip(files, requests, strict=True):
            out.print(f"{path}: ok ({request.workflow_id}, {len(request.jobs)} jobs)")


@click.command(short_help="Print the JSON Schema of workflow files (for editors).")
def schema() -> None:
    """Print the JSON Schema of workflow files; the same file ships in the package (jetdag/workflow.schema.json)."""
    click.echo(SCHEMA_PATH.read_text(encoding="utf-8"), nl=False)


COMMANDS = [validate, schema]
