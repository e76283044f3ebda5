"""The check command: probe a server's environment for CI, one row per requirement."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import click

from .common import _session, data_dir_option, fail, token_option, url_option

if TYPE_CHECKING:
    from ..client import Client


@dataclass(frozen=True)
class CheckRow:
    """One line of `kernelserver check`'s report."""

    check: str
    ok: bool
    found: str


def _requirement_row(spec: str, packages: dict[str, str]) -> CheckRow:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    try:
        requirement = Requirement(spec)
    except InvalidRequirement as exc:
        fail(f"bad --require {spec!r}: {exc}")
    installed = {canonicalize_name(name): version for name, version in packages.items()}
    version = installed.get(canonicalize_name(requirement.name))
    if version is None:
        return CheckRow(spec, False, "not installed")
    if requirement.specifier:
        try:
            satisfied = requirement.specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            satisfied = False
        if not satisfied:
            return CheckRow(spec, False, f"{version} does not satisfy {requirement.specifier}")
    return CheckRow(spec, True, version)


def _gpu_row(probe: dict[str, Any]) -> CheckRow:
    gpus = probe.get("gpus", {})
    names = []
    for source in ("torch", "jax", "nvidia_smi"):
        devices = gpus.get(source, {}).get("devices", [])
        if devices:
            names = [f"{d.get('name')}" for d in devices]
            return CheckRow("gpu", True, f"{len(devices)} via {source}: {', '.join(names)}")
    torch = gpus.get("torch", {})
    why = "no GPU seen by torch, jax or nvidia-smi"
    if torch.get("error"):
        why += f" (torch: {torch['error']})"
    return CheckRow("gpu", False, why)


def _cluster_row(cluster: dict[str, Any]) -> CheckRow:
    """The Ray cluster the server places namespaces on: its live nodes and what they have."""
    if "error" in cluster:
        return CheckRow("cluster", False, f"the cluster does not answer: {cluster['error']}")
    alive = [node for node in cluster.get("nodes", []) if node.get("alive")]
    total, free = cluster.get("total", {}), cluster.get("available", {})
    parts = [f"{len(alive)} node(s)"] + [
        f"{free.get(key, 0):g} of {total[key]:g} {key} free" for key in ("GPU", "CPU") if key in total]
    return CheckRow("cluster", bool(alive), ", ".join(parts))


def _cluster_gpu_row(cluster: dict[str, Any]) -> CheckRow:
    """--gpu on a cluster: GPUs are the nodes', given to the namespaces that ask for them."""
    gpus = cluster.get("total", {}).get("GPU", 0)
    if not gpus:
        return CheckRow("gpu", False, "no GPU in the cluster")
    return CheckRow("gpu", True, f"{gpus:g} in the cluster (a namespace gets them with "
                    '"resources": {"num_gpus": N})')


def _code_row(client: Client, code: str, kernel: str | None) -> CheckRow:
    import secrets as _secrets

    namespace = client.namespace(f"check-{_secrets.token_hex(4)}", kernel=kernel)
    try:
        result = namespace.run(code, timeout=300)
    finally:
        namespace.delete()
    if result.status == "ok":
        shown = (result.result or {}).get("text/plain") or result.stdout.strip()[-80:] or "ran"
        return CheckRow("code", True, shown)
    error = result.error
    return CheckRow("code", False, f"{error.ename}: {error.evalue}" if error else result.status)


@click.command()
@url_option
@token_option
@data_dir_option
@click.option("--require", "requirements", multiple=True, metavar="PKG[SPEC]",
              help="A package that must be installed, e.g. 'torch>=2.1' (repeatable).")
@click.option("--gpu", is_flag=True, help="Require at least one GPU (torch, jax or nvidia-smi).")
@click.option("--code", default=None, help="Code that must run without error.")
@click.option("--kernel", default=None,
              help="Check this environment instead of the server's own (`kernelserver kernels`).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def check(url: str, token: str | None, data_dir: str | None, requirements: tuple[str, ...],
          gpu: bool, code: str | None, kernel: str | None, as_json: bool) -> None:
    """Probe the server's environment (or one kernel's) for CI; exit 1 if a requirement fails."""
    rows: list[CheckRow] = []

    def report_failure(message: str) -> None:
        # A script reading --json gets a report even when the server could not be asked.
        if as_json:
            click.echo(json.dumps({"ok": False, "url": url, "error": message,
                                   "checks": [asdict(r) for r in rows]}, indent=2))

    with _session(url, token, data_dir, on_error=report_failure) as client:
        info = client.info(kernel)
        probe = info.get("probe", {})
        if "error" in probe:
            rows.append(CheckRow("probe", False, str(probe["error"])))
            probe = {}
        rows.append(CheckRow("server", True, f"kernelserver {info.get('version')} "
                             f"({info.get('backend')} backend) at {url}"))
        cluster = info.get("cluster")
        if cluster is not None:
            rows.append(_cluster_row(cluster))
        foreign = probe.get("kernel")  # a Jupyter kernel of another language: what it said it is
        if foreign:
            made_by = f"{foreign.get('implementation')} {foreign.get('implementation_version')}"
            rows.append(CheckRow("kernel", True, f"{foreign.get('language')} {foreign.get('version')} "
                                 f"({made_by})"))
            rows += [CheckRow(spec, False, f"--require checks Python packages; {kernel} is a Jupyter "
                              f"kernel ({foreign.get('language')}): check it with --code")
                     for spec in requirements]
        elif probe:
            py = probe.get("python", {})
            rows.append(CheckRow("python", True, f"{py.get('version')} ({py.get('executable')})"))
        if not foreign:
            rows += [_requirement_row(spec, probe.get("packages", {})) for spec in requirements]
        if gpu:
            rows.append(_gpu_row(probe) if cluster is None else _cluster_gpu_row(cluster))
        if code is not None:
            rows.append(_code_row(client, code, kernel))
    ok = all(row.ok for row in rows)
    if as_json:
        click.echo(json.dumps({"ok": ok, "url": url, "checks": [asdict(r) for r in rows],
                               "probe": probe}, indent=2))
    else:
        width = max(len(row.check) for row in rows)
        for row in rows:
            click.echo(f"{row.check:<{width}}  {'ok  ' if row.ok else 'FAIL'}  {row.found}")
        failed = sum(not row.ok for row in rows)
        click.echo("all checks passed" if ok else f"{failed} check(s) failed")
    sys.exit(0 if ok else 1)
