"""Settings: parsed once from the environment, clear errors, and the README documents every variable."""

from __future__ import annotations

import dataclasses
import re

import pytest

from shared.settings import (
    GatewaySettings,
    NatsSettings,
    RegistrySettings,
    SettingsError,
    StorageSettings,
    all_settings_classes,
    load,
    markdown_table,
)
from tests.helpers import ROOT


def test_defaults() -> None:
    gw = load(GatewaySettings, {})
    assert (gw.host, gw.port) == ("127.0.0.1", 8000)
    assert load(NatsSettings, {}).namespace == "jetdag"
    assert load(RegistrySettings, {}).heartbeat_interval_s == 10.0


def test_values_are_parsed_and_frozen() -> None:
    s = load(StorageSettings, {"JETDAG_REPLICAS": "3", "JETDAG_MEMORY_STORAGE": "yes"})
    assert s.replicas == 3 and s.memory is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.replicas = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cls", "env", "needle"),
    [
        (GatewaySettings, {"JETDAG_PORT": "http"}, "JETDAG_PORT must be an integer, got 'http'"),
        (StorageSettings, {"JETDAG_MEMORY_STORAGE": "maybe"}, "JETDAG_MEMORY_STORAGE must be a boolean"),
        (RegistrySettings, {"JETDAG_HEARTBEAT_INTERVAL_S": "nan"}, "JETDAG_HEARTBEAT_INTERVAL_S must be a number"),
        (RegistrySettings, {"JETDAG_HEARTBEAT_INTERVAL_S": "-1"}, "must not be negative"),
        (NatsSettings, {"JETDAG_NAMESPACE": "a.b"}, "JETDAG_NAMESPACE must match"),
        (NatsSettings, {"JETDAG_NAMESPACE": ">"}, "JETDAG_NAMESPACE must match"),
    ],
)
def test_bad_values_name_the_variable(cls: type, env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(needle)):
        load(cls, env)


def test_readme_documents_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- settings-table:start -->\n", 1)[1].split("\n<!-- settings-table:end -->", 1)[0]
    assert block == markdown_table(), "README settings table is stale: paste `jetdag settings` output"
    for cls in all_settings_classes():
        for f in dataclasses.fields(cls):
            assert f"`{f.metadata['env']}`" in readme


def test_every_environment_read_goes_through_settings() -> None:
    """No module reads a JETDAG_/NATS_ variable behind the settings' back (it would be undocumented)."""
    declared = {f.metadata["env"] for cls in all_settings_classes() for f in dataclasses.fields(cls)}
    pattern = re.compile(r"""environ(?:\.get)?\(?\[?["']((?:JETDAG|NATS)_[A-Z_]+)""")
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py"), *ROOT.glob("jetdag/**/*.py")]:
        for name in pattern.findall(path.read_text()):
            assert name in declared, f"{path.relative_to(ROOT)} reads undeclared {name}"
