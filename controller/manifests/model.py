"""Validated manifests as frozen dataclasses.

Everything here is plain data: the loading module turns YAML files into these
objects after schema validation, and every other layer only reads them.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

HOOK_PHASES = ("beforeDeploy", "afterDeploy", "beforeActivate", "afterActivate")
PLACEHOLDERS = ("application", "environment", "deployment")


@dataclasses.dataclass(frozen=True)
class Hook:
    """Inline script text, or the path of an executable file."""

    script: str | None = None
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class HeaderValue:
    """A header value: a literal, or where to read the secret from."""

    literal: str | None = None
    from_file: str | None = None
    from_env: str | None = None


@dataclasses.dataclass(frozen=True)
class Limits:
    max_bytes: int = 4 * 1024**3
    max_members: int = 100_000
    max_depth: int = 256
    max_ratio: float = 100.0
    ratio_after_bytes: int = 256 * 1024**2


@dataclasses.dataclass(frozen=True)
class GitSource:
    """source.git: a repository, the ref to deploy and how to reach and trust it."""

    url: str
    ref: str = "{deployment}"
    lfs: str = "refuse"
    subdirectory: str | None = None
    headers: Mapping[str, HeaderValue] = dataclasses.field(default_factory=dict)
    ssh_key: str | None = None  # a private key file
    known_hosts: str | None = None
    allowed_signers: str | None = None
    gpg_keyring: str | None = None
    timeout_seconds: float = 600.0


@dataclasses.dataclass(frozen=True)
class Source:
    url: str
    git: GitSource | None = None  # then url is ""
    headers: Mapping[str, HeaderValue] = dataclasses.field(default_factory=dict)
    sha256: str | None = None
    format: str = "auto"
    strip_components: int | None = None  # None means auto
    limits: Limits = Limits()
    stall_seconds: float = 60.0
    deb_root: str | None = None  # a Debian package's subtree to deploy, normalised (no leading or trailing '/')


@dataclasses.dataclass(frozen=True)
class Wave:
    """One rollout wave: who is in it (selector and/or percent) and when it opens."""

    selector: Mapping[str, str] | None = None  # label equality; all must match
    percent: float | None = None  # 0 < percent <= 100: nodes whose bucket is below it
    after_seconds: float = 0.0  # since startedAt
    after: str = "0s"  # as written in the manifest


@dataclasses.dataclass(frozen=True)
class Gate:
    """A Prometheus query that must succeed with no series for waves after the first to open."""

    prometheus: str
    query: str
    interval_seconds: float = 30.0
    timeout_seconds: float = 10.0


@dataclasses.dataclass(frozen=True)
class Rollout:
    """spec.rollout: bring the application's deployment to the fleet in waves."""

    from_deployment: str
    id: str
    started_at: float | None  # seconds since the epoch; None when startedAt is not a real time
    started_at_text: str
    waves: tuple[Wave, ...]
    gate: Gate | None = None


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """spec.healthCheck: an HTTP GET (`url`, `expect_status`) or a `command` run like a hook."""

    url: str | None = None
    expect_status: tuple[int, ...] = (200,)
    command: Hook | None = None
    interval_seconds: float = 2.0
    timeout_seconds: float = 5.0
    healthy_seconds: float = 10.0
    deadline_seconds: float = 120.0


@dataclasses.dataclass(frozen=True)
class Application:
    name: str
    file: str
    generation: str  # sha256 of the manifest file content
    application: str
    environment: str
    path: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kind: str | None = None
    deployment: str | None = None
    source: Source | None = None
    user: str | None = None
    group: str | None = None
    user_mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)
    group_mapping: Mapping[str, str] = dataclasses.field(default_factory=dict)
    keep: int = 5
    hooks: Mapping[str, Hook] = dataclasses.field(default_factory=dict)
    hook_timeout_seconds: float = 600.0
    persistent_data: str = "auto"
    rollback_on_failure: bool = True
    drift: str = "correct"
    drift_ignore: tuple[str, ...] = ()
    suspend: bool = False
    rollout: Rollout | None = None
    health_check: HealthCheck | None = None


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    file: str
    generation: str
    hooks: Mapping[str, Hook] = dataclasses.field(default_factory=dict)


def _hook(value: Any) -> Hook | None:
    if isinstance(value, str):
        return Hook(script=value)
    if isinstance(value, Mapping):
        return Hook(path=str(value["path"]))
    return None


def _hooks(data: Mapping[str, Any]) -> dict[str, Hook]:
    return {phase: hook for phase in HOOK_PHASES if (hook := _hook(data.get(phase))) is not None}


def _health_check(data: Mapping[str, Any]) -> HealthCheck:
    http = data.get("http")
    return HealthCheck(
        url=str(http["url"]) if http else None,
        expect_status=tuple(int(s) for s in http["expectStatus"]) if http else (200,),
        command=_hook(data.get("command")),
        interval_seconds=float(data["intervalSeconds"]),
        timeout_seconds=float(data["timeoutSeconds"]),
        healthy_seconds=float(data["healthySeconds"]),
        deadline_seconds=float(data["deadlineSeconds"]),
    )


def _header(value: Any) -> HeaderValue:
    if isinstance(value, Mapping):
        return HeaderValue(from_file=value.get("fromFile"), from_env=value.get("fromEnv"))
    return HeaderValue(literal=str(value))


def _git(data: Mapping[str, Any]) -> GitSource:
    verify = data.get("verify", {})
    return GitSource(
        url=data["url"],
        ref=data["ref"],
        lfs=data["lfs"],
        subdirectory=data["subdirectory"].strip("/") or None if "subdirectory" in data else None,
        headers={k: _header(v) for k, v in data["headers"].items()},
        ssh_key=data["sshKey"]["fromFile"] if "sshKey" in data else None,
        known_hosts=data.get("knownHosts"),
        allowed_signers=verify.get("allowedSigners"),
        gpg_keyring=verify.get("gpgKeyring"),
        timeout_seconds=float(data["timeoutSeconds"]),
    )


def _source(data: Mapping[str, Any]) -> Source:
    limits = data["limits"]
    strip = data["stripComponents"]
    return Source(
        url=data.get("url", ""),
        git=_git(data["git"]) if "git" in data else None,
        headers={k: _header(v) for k, v in data["headers"].items()},
        sha256=data["sha256"].lower() if "sha256" in data else None,
        format=data["format"],
        strip_components=None if strip == "auto" else int(strip),
        limits=Limits(
            max_bytes=int(limits["maxBytes"]),
            max_members=int(limits["maxMembers"]),
            max_depth=int(limits["maxDepth"]),
            max_ratio=float(limits["maxRatio"]),
        ),
        stall_seconds=float(data["stallSeconds"]),
        deb_root=deb_root(data["debRoot"]) if "debRoot" in data else None,
    )


def deb_root(text: str) -> str:
    """source.debRoot without '.' components and trailing '/' ('./opt/acme/' is 'opt/acme'); absolute kept as is."""
    if text.startswith("/"):
        return text  # refused by the cross-checks
    return "/".join(part for part in text.split("/") if part not in ("", "."))


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(text: str) -> float:
    """Seconds in a schema-valid duration such as 30s, 30m or 2h."""
    return float(int(text[:-1]) * DURATION_UNITS[text[-1]])


def timestamp(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC time such as 2026-12-01T10:00:00Z, or None if it is no real time."""
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.utcoffset() != datetime.timedelta(0):
        return None
    return parsed.timestamp()


def _rollout(data: Mapping[str, Any], deployment: str | None) -> Rollout:
    gate = data.get("gate")
    return Rollout(
        from_deployment=data["from"],
        id=data.get("id", deployment or ""),
        started_at=timestamp(data["startedAt"]),
        started_at_text=data["startedAt"],
        waves=tuple(
            Wave(
                selector=dict(wave["selector"]) if "selector" in wave else None,
                percent=float(wave["percent"]) if "percent" in wave else None,
                after_seconds=duration_seconds(wave.get("after", "0s")),
                after=wave.get("after", "0s"),
            )
            for wave in data["waves"]
        ),
        gate=None if gate is None else Gate(
            prometheus=gate["prometheus"],
            query=gate["query"],
            interval_seconds=float(gate["intervalSeconds"]),
            timeout_seconds=float(gate["timeoutSeconds"]),
        ),
    )


def application_from_document(doc: Mapping[str, Any], file: str, generation: str) -> Application:
    """Build an Application from a schema-valid document with defaults applied."""
    meta, spec = doc["metadata"], doc["spec"]
    user_mapping = dict(spec["userMapping"])
    return Application(
        name=meta["name"],
        file=file,
        generation=generation,
        application=spec.get("application", meta["name"]),
        environment=spec["environment"],
        path=spec["path"],
        labels=dict(meta["labels"]),
        kind=spec.get("kind"),
        deployment=spec.get("deployment"),
        source=_source(spec["source"]) if "source" in spec else None,
        user=spec.get("user"),
        group=spec.get("group"),
        user_mapping=user_mapping,
        group_mapping=dict(spec["groupMapping"]) or user_mapping,
        keep=int(spec["retention"]["keep"]),
        hooks=_hooks(spec["hooks"]),
        hook_timeout_seconds=float(spec["hookTimeoutSeconds"]),
        persistent_data=spec["persistentData"],
        rollback_on_failure=bool(spec["rollbackOnFailure"]),
        drift=spec["drift"],
        drift_ignore=tuple(spec["driftIgnore"]),
        suspend=bool(spec["suspend"]),
        rollout=_rollout(spec["rollout"], spec.get("deployment")) if "rollout" in spec else None,
        health_check=_health_check(spec["healthCheck"]) if "healthCheck" in spec else None,
    )


def kind_from_document(doc: Mapping[str, Any], file: str, generation: str) -> Kind:
    """Build a Kind from a schema-valid document with defaults applied."""
    return Kind(
        name=doc["metadata"]["name"],
        file=file,
        generation=generation,
        hooks=_hooks(doc["spec"].get("hooks", {})),
    )


def expand_url(url: str, app: Application, deployment: str) -> str:
    """Fill the placeholders of a source URL (or a git ref)."""
    values = {
        "application": app.application,
        "environment": app.environment,
        "deployment": deployment,
    }
    for key, value in values.items():
        url = url.replace("{" + key + "}", value)
    return url
