"""Checks that a single schema cannot express: paths, placeholders, and checks across manifests."""

from __future__ import annotations

import datetime
import decimal
import math
import os
import re
import urllib.parse
from collections.abc import Iterator, Sequence

from controller import errors
from controller.manifests import model

# The system hierarchy: top-level directories of the FHS and of common distributions. An application
# path inside it must be below one of the application roots; outside it (/data/..., /app) anything goes.
SYSTEM_TOP = frozenset(["bin", "boot", "cdrom", "dev", "efi", "etc", "home", "lib", "lib32", "lib64", "libx32",
                        "lost+found", "media", "mnt", "nix", "opt", "proc", "root", "run", "sbin", "snap", "srv",
                        "sys", "tmp", "usr", "var"])
# Roots of which any directory below is an application's (temporary directories are not system ones).
APPLICATION_ROOTS = ("/opt", "/srv", "/var/www", "/tmp", "/var/tmp")
# Roots whose first level names an application, unless that name is one the system uses there.
FHS_LOCAL = frozenset(["bin", "etc", "games", "include", "lib", "lib32", "lib64", "libexec", "libx32", "man",
                       "sbin", "share", "src"])
SYSTEM_STATE = frozenset([
    "apt", "aptitude", "AccountsService", "apache2", "cloud", "containerd", "dbus", "dhcp", "dkms", "dnf", "docker",
    "dpkg", "fwupd", "git", "grub", "initramfs-tools", "libvirt", "locales", "logrotate", "lxc", "lxd", "machines",
    "man-db", "misc", "mysql", "nginx", "nfs", "ntp", "chrony", "os-prober", "pacman", "pam", "php", "polkit-1",
    "portables", "postfix", "postgresql", "private", "python", "redis", "rpm", "rsyslog", "snapd", "sss", "sudo",
    "systemd", "tether", "ucf", "udisks2", "update-manager", "update-notifier", "ubuntu-advantage", "usbutils",
    "vim", "yum",
])
NAMED_ROOTS = {"/usr/local": FHS_LOCAL, "/var/lib": SYSTEM_STATE, "/var/opt": SYSTEM_STATE}
ALLOWED = ("below /opt, /srv, /var/www, /home/USER, /usr/local/APP, /var/lib/APP or /var/opt/APP (APP not a "
           "name the system uses there), below /tmp or /var/tmp, or outside the system hierarchy")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# The first second that datetime (and so an RFC 3339 time) cannot hold: a wave may not open at or after it.
YEAR_10000 = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC).timestamp() + 1


def is_inside(path: str, tree: str) -> bool:
    """True when `path` is `tree` or below it (both normalised absolute paths)."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def path_problem(path: str) -> str | None:
    """Why `path` cannot be an application path, or None."""
    if not path.startswith("/"):
        return f"path {path!r} must be absolute"
    normal = "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading //
    if normal != path:
        return f"path {path!r} is not normalised; write {normal!r}"
    if path == "/":
        return "path '/' is the root directory; give the application a directory of its own"
    if "\n" in path or "\0" in path:
        return "path contains a control character"
    return placement_problem(path)


def placement_problem(path: str) -> str | None:
    """Why the normalised absolute `path` is in the system hierarchy but not below an application root, or None."""
    parts = path.strip("/").split("/")
    if parts[0] not in SYSTEM_TOP or any(is_inside(path, root) and path != root for root in APPLICATION_ROOTS):
        return None
    if parts[0] == "home" and len(parts) <= 2:
        return (f"path {path!r} is /home or a home directory itself; use a directory of its own below a home "
                "directory, such as /home/USER/APP")
    if parts[0] == "home":
        if not any(part.startswith(".") for part in parts[2:]):
            return None
        return (f"path {path!r} is inside a hidden directory of a home directory (like ~/.ssh or ~/.config, which "
                "programs read as configuration); use a directory such as /home/USER/APP")
    for root, names in NAMED_ROOTS.items():
        if is_inside(path, root) and path != root:
            name = parts[len(root.split("/")) - 1]
            if name not in names:
                return None
            return (f"path {path!r} is inside the system directory {root}/{name}; below {root} an application "
                    f"needs a directory whose name the system does not use there, such as {root}/APP")
    tree = "/" + "/".join(parts[: 2 if parts[0] in ("usr", "var") and len(parts) > 1 else 1])
    if path in (*APPLICATION_ROOTS, *NAMED_ROOTS):
        return f"path {path!r} is a system directory; use a directory below it, such as {path}/APP"
    if path in ("/usr", "/var"):
        return f"path {path!r} is a system directory; an application path must be {ALLOWED}"
    if path == tree:
        return (f"path {path!r} is a system directory, and so is everything below it ({path}/APP too); an "
                f"application path must be {ALLOWED}")
    return f"path {path!r} is inside the system directory {tree}; an application path must be {ALLOWED}"


def deb_root_problem(source: model.Source) -> str | None:
    """Why source.debRoot cannot name a subtree of a package, or None (also None when it is not given)."""
    if source.deb_root is None:
        return None
    if source.format not in ("auto", "deb"):
        return f"debRoot picks a subtree of a Debian package, but source.format is {source.format}; remove one"
    if source.deb_root == "":
        return "debRoot names no directory; give a subtree of the package such as opt/acme, or leave debRoot out"
    if source.deb_root.startswith("/"):
        return (f"debRoot {source.deb_root!r} is absolute; write it relative to the package's root, as "
                f"{source.deb_root.strip('/')!r}")
    if ".." in source.deb_root.split("/"):
        return f"debRoot {source.deb_root!r} has a '..' component; it must name a directory inside the package"
    if any(ord(c) < 32 or ord(c) == 127 for c in source.deb_root):
        return "debRoot has a control character"
    return None


def application_problems(app: model.Application) -> Iterator[tuple[str, str]]:
    """(message, JSON pointer) for what is wrong with one application on its own."""
    if problem := path_problem(app.path):
        yield problem, "/spec/path"
    if not math.isfinite(app.hook_timeout_seconds):
        yield "hookTimeoutSeconds must be a finite number of seconds", "/spec/hookTimeoutSeconds"
    if app.health_check is not None:
        yield from _health_check_problems(app.health_check)
    if app.source is not None and (problem := deb_root_problem(app.source)):
        yield problem, "/spec/source/debRoot"
    if app.source is not None and app.source.git is not None:
        yield from git_problems(app.source.git)
        if app.source.sha256 is not None:
            yield ("source.sha256 is for url artifacts; a git source is pinned by a commit id in source.git.ref "
                   "and trusted through source.git.verify"), "/spec/source/sha256"
        if app.source.headers:
            yield "a git source takes its headers in source.git.headers", "/spec/source/headers"
    elif app.source is not None:
        for name in PLACEHOLDER.findall(app.source.url):
            if name not in model.PLACEHOLDERS:
                allowed = ", ".join("{" + p + "}" for p in model.PLACEHOLDERS)
                yield f"unknown placeholder {{{name}}} in the URL; only {allowed} exist", "/spec/source/url"
        try:
            parts = urllib.parse.urlsplit(app.source.url)
            port_ok = parts.port is None or parts.port > 0
        except ValueError as exc:
            parts, port_ok = None, False
            yield f"the URL is not valid: {exc}", "/spec/source/url"
        if parts is not None and not port_ok:
            yield "the URL's port must be from 1 to 65535", "/spec/source/url"
        elif parts is not None and parts.scheme in ("http", "https") and not parts.hostname:
            yield "the URL has no host name", "/spec/source/url"
    if app.rollout is not None:
        yield from rollout_problems(app.rollout, app.deployment)


def git_problems(git: model.GitSource) -> Iterator[tuple[str, str]]:
    """(message, JSON pointer) for a source.git the schema accepts but that cannot work or would leak."""
    for name in PLACEHOLDER.findall(git.ref):
        if name not in model.PLACEHOLDERS:
            allowed = ", ".join("{" + p + "}" for p in model.PLACEHOLDERS)
            yield f"unknown placeholder {{{name}}} in the ref; only {allowed} exist", "/spec/source/git/ref"
    try:
        parts = urllib.parse.urlsplit(git.url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        yield f"the git URL is not valid: {exc}", "/spec/source/git/url"
        return
    if parts.password is not None or (parts.username is not None and parts.scheme != "ssh"):
        yield ("the git URL carries credentials; put them in source.git.headers (https) or source.git.sshKey "
                   "(ssh) so they never reach a log or the mirror's config"), "/spec/source/git/url"
    if parts.query or parts.fragment:
        yield "the git URL has a query or fragment; remove it", "/spec/source/git/url"
    if parts.scheme == "ssh":
        if git.known_hosts is None:
            yield ("an ssh:// git URL needs source.git.knownHosts, a known_hosts file with the server's host key "
                   "(tether checks host keys strictly)"), "/spec/source/git/knownHosts"
        if git.headers:
            yield "source.git.headers are sent over https only; an ssh:// URL uses sshKey", "/spec/source/git/headers"
    else:
        if git.ssh_key is not None:
            yield "source.git.sshKey is for ssh:// URLs only", "/spec/source/git/sshKey"
        if parts.scheme == "file" and git.headers:
            yield "source.git.headers make no sense for a file:// URL", "/spec/source/git/headers"
    if parts.scheme in ("http", "https", "ssh") and not parts.hostname:
        yield "the git URL has no host name", "/spec/source/git/url"
    if git.subdirectory is not None and ".." in git.subdirectory.split("/"):
        yield "source.git.subdirectory must not contain '..'", "/spec/source/git/subdirectory"


def rollout_problems(rollout: model.Rollout, deployment: str | None) -> Iterator[tuple[str, str]]:
    """(message, JSON pointer) for a spec.rollout the schema accepts but that makes no sense.

    Allowed on purpose: no gate (every wave opens at its time), and waves that do not cover every node
    (a node in no wave stays on `from`)."""
    if deployment is None:
        yield ("spec.rollout needs spec.deployment: the rollout brings that deployment to the fleet; set it, or "
               "remove the rollout"), "/spec/rollout"
    elif rollout.from_deployment == deployment:
        yield (f"rollout.from is {deployment!r}, the same as spec.deployment; a rollout goes from one deployment "
               "to another"), "/spec/rollout/from"
    if rollout.started_at is None:
        yield (f"startedAt {rollout.started_at_text!r} is not a real UTC time; write it like "
               "\"2026-12-01T10:00:00Z\""), "/spec/rollout/startedAt"
    if rollout.gate is not None and not rollout.gate.query.strip():
        yield "the gate's query is empty; give the PromQL whose series hold the rollout", "/spec/rollout/gate/query"
    widest: tuple[int, float] | None = None  # (index, percent) of the last wave with a percent so far
    for index, wave in enumerate(rollout.waves):
        where = f"/spec/rollout/waves/{index}"
        if wave.selector is None and wave.percent is None:
            yield (f"wave {index + 1} has neither a selector nor a percent, so no node is in it; give it one or "
                   "both"), where
        if wave.selector is not None and not wave.selector:
            yield (f"wave {index + 1} has an empty selector, which would match every node; write percent: 100 "
                   "to mean everyone"), where + "/selector"
        if wave.percent is not None:
            exponent = decimal.Decimal(repr(wave.percent)).as_tuple().exponent
            if isinstance(exponent, int) and exponent < -2:
                yield (f"wave {index + 1} has percent {wave.percent}; buckets have two decimals, so write at most "
                       "two"), where + "/percent"
            if widest is not None and wave.percent < widest[1]:
                yield (f"wave {index + 1} has percent {wave.percent:g}, less than the {widest[1]:g} of wave "
                       f"{widest[0] + 1}; percents are shares of all nodes and may not shrink from one wave to the "
                       "next"), where + "/percent"
            widest = (index, max(wave.percent, widest[1] if widest else 0.0))
        if rollout.started_at is not None and rollout.started_at + wave.after_seconds >= YEAR_10000:
            yield (f"wave {index + 1} would open after the year 9999 (startedAt {rollout.started_at_text} + after "
                   f"{wave.after}), a time tether cannot show; make `after` shorter or startedAt earlier"), \
                where + "/after"
        if index > 0 and wave.after_seconds < rollout.waves[index - 1].after_seconds:
            yield (f"wave {index + 1} opens after {wave.after}, before wave {index} (after "
                   f"{rollout.waves[index - 1].after}); `after` counts from startedAt and may not go backwards"), \
                where + "/after"


def _health_check_problems(check: model.HealthCheck) -> Iterator[tuple[str, str]]:
    times = {"intervalSeconds": check.interval_seconds, "timeoutSeconds": check.timeout_seconds,
             "healthySeconds": check.healthy_seconds, "deadlineSeconds": check.deadline_seconds}
    for field, value in times.items():
        if not math.isfinite(value):
            yield f"{field} must be a finite number of seconds", f"/spec/healthCheck/{field}"
    if check.healthy_seconds >= check.deadline_seconds:
        yield (f"healthySeconds ({check.healthy_seconds:g}) must be less than deadlineSeconds "
               f"({check.deadline_seconds:g}): the deployment could never become healthy in time",
               "/spec/healthCheck/healthySeconds")
    if check.url is not None:
        try:
            parts = urllib.parse.urlsplit(check.url)
            bad = None if parts.hostname else "the URL has no host name"
            bad = bad or (None if parts.port is None or parts.port > 0 else "the URL's port must be from 1 to 65535")
        except ValueError as exc:
            bad = f"the URL is not valid: {exc}"
        if bad:
            yield bad, "/spec/healthCheck/http/url"


def _overlaps(paths: Sequence[str]) -> dict[int, list[int]]:
    """For each index, the later indexes whose path is the same as its path, inside it or around it, in order.

    Sorted with a "/" appended, every path inside a tree comes right after the tree, so each path is compared
    with the paths after it only until one is not inside: n log n, not n squared (1000 applications)."""
    keys = sorted((path.rstrip("/") + "/", index) for index, path in enumerate(paths))
    found: dict[int, list[int]] = {}
    for position, (tree, index) in enumerate(keys):
        later = position + 1
        while later < len(keys) and keys[later][0].startswith(tree):
            other = keys[later][1]
            found.setdefault(min(index, other), []).append(max(index, other))
            later += 1
    return {index: sorted(others) for index, others in found.items()}


def check(
    parsed: Sequence[model.Application | model.Kind],
    reserved_paths: Sequence[str] = (),
) -> tuple[dict[str, model.Application], dict[str, model.Kind], list[errors.ManifestError]]:
    """Check manifests against each other; return the valid applications and kinds, and problems."""
    problems: list[errors.ManifestError] = []
    kinds: dict[str, model.Kind] = {}
    apps: dict[str, model.Application] = {}
    refused: set[str] = set()  # files refused by a cross check

    def refuse(file: str, message: str, pointer: str) -> None:
        problems.append(errors.ManifestError(file, message, None, pointer))
        refused.add(file)

    seen: dict[tuple[str, str], str] = {}
    for item in parsed:
        kind = "Application" if isinstance(item, model.Application) else "ApplicationKind"
        other = seen.setdefault((kind, item.name), item.file)
        if other != item.file:
            refuse(item.file, f"the {kind} name {item.name!r} is also used by {other}; names must be unique", "/metadata/name")
            refuse(other, f"the {kind} name {item.name!r} is also used by {item.file}; names must be unique", "/metadata/name")
    applications = [a for a in parsed if isinstance(a, model.Application)]
    overlapping = _overlaps([app.path for app in applications])
    for index, app in enumerate(applications):
        for later in overlapping.get(index, ()):
            other_app = applications[later]
            for one, two in ((app, other_app), (other_app, app)):
                refuse(one.file, f"path {one.path} overlaps {two.path} of {two.file}; each application needs its own tree", "/spec/path")
        real = os.path.realpath(app.path)
        for reserved in reserved_paths:
            if any(is_inside(p, reserved) or is_inside(reserved, p) for p in (app.path, real)):
                refuse(app.file, f"path {app.path} overlaps tether's own directory {reserved}", "/spec/path")
    for item in parsed:
        if isinstance(item, model.Kind) and item.file not in refused:
            kinds[item.name] = item
    for app in applications:
        if app.kind is not None and app.kind not in kinds and app.file not in refused:
            refuse(app.file, f"unknown kind {app.kind!r}; add an ApplicationKind manifest named so", "/spec/kind")
        if app.file not in refused:
            apps[app.name] = app
    return apps, kinds, problems
