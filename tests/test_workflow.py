"""Workflow files (issue 9 part 1): parsed and checked locally, every problem with its file and line; the JSON
Schema shipped in the package agrees with the loader. Pure: no services."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from jetdag.workflow import SCHEMA_PATH, WorkflowError, load_workflow, parse_workflow, workflow_schema
from tests.helpers import ROOT


def problems(text: str, name: str = "pipeline.yaml") -> list[str]:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(textwrap.dedent(text).lstrip("\n"), name)
    return info.value.problems


def test_the_issue_example_with_defaults() -> None:
    request = parse_workflow(
        textwrap.dedent(
            """
            workflowId: training-pipeline
            parallelism: 4
            jobs:
              - id: preprocess
                type: preprocessing
                config: {dataset: s3://bucket/x}
              - id: train
                type: train
                dependsOn: [preprocess]
                retries: 2
            """
        )
    )
    assert request.workflow_id == "training-pipeline" and request.parallelism == 4
    pre, train = request.jobs
    assert (pre.name, pre.depends_on, pre.config) == ("preprocess", [], {"dataset": "s3://bucket/x"})
    assert (train.name, train.depends_on, train.retries) == ("train", ["preprocess"], 2)


def test_every_job_option_is_accepted() -> None:
    request = parse_workflow(
        textwrap.dedent(
            """
            workflowId: opts
            jobs:
              - {id: a, name: Step A, type: sleep, config: {seconds: 1}, retries: 3, backoffMs: 50,
                 timeoutS: 2.5, capability: gpu, dependsOn: []}
            """
        )
    )
    job = request.jobs[0]
    assert (job.name, job.retries, job.backoff_ms, job.timeout_s, job.capability) == ("Step A", 3, 50, 2.5, "gpu")


def test_top_level_fields_are_kept() -> None:
    text = "workflowId: w\nidempotencyKey: k-1\nrunAt: 2030-01-02T03:04:05Z\njobs: [{id: a, type: noop}]\n"
    request = parse_workflow(text)
    assert request.idempotency_key == "k-1" and request.run_at is not None
    assert request.run_at.isoformat() == "2030-01-02T03:04:05+00:00"
    assert parse_workflow("workflowId: w\ndelayS: 30\njobs: [{id: a, type: noop}]\n").delay_s == 30
    assert problems("workflowId: w\ndelayS: -1\njobs: [{id: a, type: noop}]\n") == [
        "pipeline.yaml:2: workflow: delayS: expected `float` >= 0.0"
    ]


def test_a_dangling_dependency_names_file_line_and_job() -> None:
    found = problems(
        """
        workflowId: training-pipeline
        parallelism: 4
        jobs:
          - id: preprocess
            type: preprocessing
            config: {dataset: s3://bucket/x}
          - id: train
            type: train
            retries: 2

            dependsOn: [prepocess]
        """
    )
    assert found == ['pipeline.yaml:11: job "train" depends on "prepocess", which is not defined']


def test_every_problem_is_reported_at_once_in_line_order() -> None:
    found = problems(
        """
        workflowId: wf
        jobs:
          - id: a
            type: noop
            retries: "2"
          - id: b
            type: noop
            colour: red
          - id: c
            type: noop
            dependsOn: [d]
          - id: d
            type: noop
            dependsOn: [e]
          - id: e
            type: noop
            dependsOn: [c]
          - id: a
            type: noop
          - id: f
            type: noop
            dependsOn: [f]
        """
    )
    assert found == [
        'pipeline.yaml:5: job "a": retries: expected `int`, got `str`',
        'pipeline.yaml:8: job "b": unknown field "colour"',
        'pipeline.yaml:11: jobs "c" → "e" → "d" → "c" form a cycle',
        'pipeline.yaml:18: job id "a" is defined twice (first as jobs[0])',
        'pipeline.yaml:22: job "f" depends on itself',
    ]


def test_wrong_types_and_ids() -> None:
    found = problems(
        """
        workflowId: "has space"
        parallelism: 0
        jobs:
          - id: a.b
            type: noop
          - just a string
        """
    )
    assert found[0].startswith("pipeline.yaml:1: workflow: workflowId: expected `str` matching regex")
    assert any(p.startswith('pipeline.yaml:4: job "a.b": id: expected `str` matching regex') for p in found)
    assert "pipeline.yaml:6: jobs[1]: a job is a mapping with at least id and type" in found
    # msgspec stops at the first bad top-level field; the next run shows the next one.
    assert not any("parallelism" in p for p in found[1:])


def test_missing_and_empty_jobs() -> None:
    assert problems("workflowId: wf\n") == ["pipeline.yaml:1: jobs is missing: a workflow needs at least one job"]
    assert problems("workflowId: wf\njobs: []\n") == [
        "pipeline.yaml:2: jobs must not be empty: a workflow needs at least one job"
    ]
    assert problems("- a\n- b\n") == ["pipeline.yaml:1: a workflow is a mapping with workflowId and jobs"]


def test_duplicate_keys_and_malformed_yaml() -> None:
    assert problems("workflowId: a\nworkflowId: b\njobs: [{id: x, type: noop}]\n") == [
        'pipeline.yaml:2: key "workflowId" appears twice'
    ]
    (bad,) = problems("workflowId: wf\njobs:\n  - id: [unclosed\n")
    assert bad.startswith("pipeline.yaml:") and "malformed YAML" in bad


def test_json_files_get_lines_too() -> None:
    text = json.dumps(
        {
            "$schema": "../jetdag/workflow.schema.json",
            "workflowId": "wf",
            "jobs": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop", "dependsOn": ["z"]}],
        },
        indent=2,
    )
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, "wf.json")
    line = next(i for i, s in enumerate(text.splitlines(), 1) if '"z"' in s)
    assert info.value.problems == [f'wf.json:{line}: job "b" depends on "z", which is not defined']
    with pytest.raises(WorkflowError, match=r"^wf.json:1: malformed JSON: "):
        parse_workflow('{"workflowId": }', "wf.json")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match=r"nope\.yaml: cannot read it"):
        load_workflow(tmp_path / "nope.yaml")


def test_the_shipped_schema_is_the_generated_one() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == workflow_schema(), "run `python -m jetdag.workflow`"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load_and_satisfy_the_schema(path: Path) -> None:
    request = load_workflow(path)
    assert request.jobs
    jsonschema.validate(yaml.safe_load(path.read_text()), workflow_schema())


@pytest.mark.parametrize(
    "document",
    [
        {"workflowId": "wf", "jobs": []},
        {"workflowId": "wf", "jobs": [{"id": "a"}]},
        {"workflowId": "wf", "jobs": [{"id": "a", "type": "noop", "retries": "2"}]},
        {"workflowId": "wf", "jobs": [{"id": "a", "type": "noop", "colour": "red"}]},
        {"workflowId": "a b", "jobs": [{"id": "a", "type": "noop"}]},
        {"jobs": [{"id": "a", "type": "noop"}]},
    ],
)
def test_the_schema_rejects_what_the_loader_rejects(document: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, workflow_schema())
    with pytest.raises(WorkflowError):
        parse_workflow(json.dumps(document), "wf.json")
