"""The docs stay true to the code: every setting documented, from the one settings table."""

from __future__ import annotations

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
