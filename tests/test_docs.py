"""The docs stay true to the code: every setting documented, from the one settings table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kernelserver.config import SETTINGS, load_config, settings_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_readme_settings_table_is_rendered_from_the_settings_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table")
    end = readme.index("<!-- /settings-table -->")
    block = readme[readme.index("\n", start) + 1:end]
    assert block == settings_markdown(), "regenerate with kernelserver.config.settings_markdown()"


def test_every_setting_has_help_and_an_env_variable_that_works() -> None:
    for setting in SETTINGS:
        assert setting.help.strip(), setting.name
        assert setting.env == "KERNELSERVER_" + setting.name.upper()
    config = load_config(environ={"KERNELSERVER_MAX_NAMESPACES": "7",
                                  "KERNELSERVER_ALLOWED_HOSTS": "a.lan, b.lan",
                                  "KERNELSERVER_NO_AUTH": "true"})
    assert config["max_namespaces"] == 7
    assert config["allowed_hosts"] == ("a.lan", "b.lan")
    assert config["no_auth"] is True


def test_overrides_beat_environment() -> None:
    config = load_config({"port": 6000}, environ={"KERNELSERVER_PORT": "7000"})
    assert config["port"] == 6000


def test_settings_reference_is_rendered_from_the_table() -> None:
    text = (ROOT / "docs" / "settings.md").read_text()
    assert text.endswith(settings_markdown())
    for setting in SETTINGS:
        assert f"`{setting.name}`" in text and f"`{setting.env}`" in text


def _app_routes(blueprint: str | None = None) -> set[tuple[str, str]]:
    import tempfile

    from kernelserver import create_app

    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app({"backend": "inprocess", "token": "t", "data_dir": data_dir})
        try:
            return {(method, rule.rule) for rule in app.url_map.iter_rules()
                    if rule.endpoint != "static"
                    and (blueprint is None or rule.endpoint.startswith(blueprint + "."))
                    for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
        finally:
            app.extensions["kernelserver"].close()


def test_postman_collection_covers_every_route_with_a_token_variable() -> None:
    collection = json.loads((ROOT / "docs" / "postman_collection.json").read_text())
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    assert collection["auth"] == {"type": "bearer", "bearer": [
        {"key": "token", "value": "{{token}}", "type": "string"}]}
    assert {v["key"] for v in collection["variable"]} >= {"baseUrl", "token"}
    covered = set()
    for item in collection["item"]:
        request = item["request"]
        path = "/" + "/".join(request["url"]["path"])
        covered.add((request["method"], path))
        assert request["url"]["raw"].startswith("{{baseUrl}}/" if path != "/" else "{{baseUrl}}")
        if "body" in request:
            json.loads(request["body"]["raw"])
    # The collection is the v1 API's; Jupyter clients speak the Jupyter API.
    assert covered >= _app_routes("v1"), sorted(_app_routes("v1") - covered)


def test_readme_and_docs_name_every_route() -> None:
    readme = (ROOT / "README.md").read_text()
    for method, path in _app_routes():
        assert f"`{method} {path}`" in readme or f"`{path}`" in readme, path


def test_every_test_the_threat_model_names_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    named = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 15
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE)]
    assert not missing, missing


# What README says once for every client command, in the paragraph after the synopsis.
CLIENT_OPTIONS = {"--url", "--token", "--data-dir"}


def test_readme_cli_synopsis_names_every_option_of_every_command() -> None:
    import click

    from kernelserver.cli import cli

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```sh\nkernelserver serve ")
    synopsis = readme[start:readme.index("```", start + 3)]
    lines: dict[str, str] = {}
    current = ""
    for line in synopsis.splitlines()[1:]:
        if line.startswith("kernelserver "):
            current = line.split()[1]
        lines[current] = lines.get(current, "") + " " + line.split("#")[0]
    # `interrupt ID | restart ID | rm ID` share a line, and its [--json].
    shared = next(text for name, text in lines.items() if name == "interrupt")
    for name in ("restart", "rm"):
        lines.setdefault(name, shared)
    for name, command in cli.commands.items():
        assert name in lines, f"README's CLI synopsis has no line for `kernelserver {name}`"
        common = set() if name in ("serve", "stop", "token") else CLIENT_OPTIONS
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            long = next(o for o in param.opts if o.startswith("--"))
            if long in common:
                continue
            assert re.search(re.escape(long) + r"\b", lines[name]), \
                f"README's CLI synopsis lacks `kernelserver {name} {long}`"


def test_serve_help_points_at_the_environment_and_the_settings_reference() -> None:
    from click.testing import CliRunner

    from kernelserver.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["serve", "--help"]).output.split())
    assert "KERNELSERVER_" in text and "docs/settings.md" in text
