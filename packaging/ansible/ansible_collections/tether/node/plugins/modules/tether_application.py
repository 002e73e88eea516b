#!/usr/bin/python
# Copyright: the tether authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: write one tether Application manifest, and optionally wait for its deployment."""
# Ansible wants the documentation blocks before any import (ansible-test: import-before-documentation).
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
module: tether_application
short_description: Declare an application for tether, the node-local delivery controller
version_added: "0.1.0"
description:
  - Writes one tether C(Application) manifest, C(<manifests_dir>/<name>.yaml), from the module's options.
  - The file is written to a temporary dotfile in the same directory (which tether ignores) and renamed into
    place, so tether never reads half a manifest. It is owned by root (when the module runs as root) with
    mode C(0644), as tether requires.
  - The YAML is deterministic, so an unchanged manifest reports C(changed=false) and tether sees no new
    generation.
  - Optionally validates the manifest with C(tether validate) (together with the other manifests of the
    directory, so that duplicate names, overlapping paths and unknown kinds are found) before it is moved in
    place, and optionally waits until tether reports the requested deployment as current and Ready.
  - Options that are not set are left out of the manifest, so tether's defaults apply.
    C(tether schema application) prints every field with its default.
author:
  - the tether authors
requirements:
  - PyYAML on the managed node (ansible-core depends on it)
  - the C(tether) command on the managed node when O(validate=true) or O(wait=true)
attributes:
  check_mode:
    description: Reports what would change and writes nothing; validation still runs, waiting does not.
    support: full
  diff_mode:
    description: Shows the manifest text before and after, and changed file attributes.
    support: full
options:
  name:
    description:
      - The application's name on this node (C(metadata.name)); also the file name C(<name>.yaml).
      - Lower-case letters, digits, C(.), C(_) and C(-), starting and ending with a letter or digit, at most 63
        characters.
    type: str
    required: true
  state:
    description:
      - V(present) writes the manifest; V(absent) removes it. tether then stops managing the application and
        leaves its files on disk.
    type: str
    choices: [present, absent]
    default: present
  manifests_dir:
    description:
      - The directory tether reads manifests from (its C(--manifests) option). Created with mode C(0755) when
        missing.
    type: path
    default: /etc/tether/manifests
  labels:
    description: Free-form labels (C(metadata.labels)).
    type: dict
  application:
    description: Application name passed to hooks and URL placeholders (C(spec.application)); tether's default is O(name).
    type: str
  environment:
    description: Environment name passed to hooks and URL placeholders (C(spec.environment)); tether's default is V(production).
    type: str
  path:
    description:
      - Absolute directory that holds the deployments (C(spec.path)); not V(/) and not a system directory.
      - Required when O(state=present).
    type: path
  kind:
    description: Name of an C(ApplicationKind) manifest whose hooks run first (C(spec.kind)).
    type: str
  deployment:
    description:
      - The desired deployment (C(spec.deployment)), for example a version. Quote version numbers so that YAML
        keeps them as strings.
      - Leave it out to let C(tether deploy) set it.
    type: str
  source:
    description:
      - Where the files of a deployment come from (C(spec.source)); exactly one of O(source.url) (an archive or a
        Debian package) and O(source.git) (a repository).
    type: dict
    suboptions:
      url:
        description: http(s):// or file:// URL; may contain C({application}), C({environment}) and C({deployment}).
        type: str
      git:
        description:
          - A git repository (C(spec.source.git)); tether keeps a mirror of it on the node and deploys the tree of
            O(source.git.ref).
        type: dict
        suboptions:
          url:
            description: https://, ssh:// or file:// URL of the repository, without credentials.
            type: str
            required: true
          ref:
            description: A tag, a branch or a full commit id; may contain placeholders; tether's default is V({deployment}).
            type: str
          lfs:
            description: V(refuse) (tether's default) refuses LFS pointer files; V(ignore) deploys them as they are.
            type: str
            choices: [refuse, ignore]
          subdirectory:
            description: Deploy this directory of the repository only.
            type: str
          headers:
            description: HTTP request headers for an https repository, in the forms of O(source.headers).
            type: dict
          ssh_key:
            description: "The private key for an ssh repository, as C({fromFile: /path})."
            type: dict
            aliases: [sshKey]
            suboptions:
              from_file:
                description: Absolute path of the key file, read by tether.
                type: path
                required: true
                aliases: [fromFile]
          known_hosts:
            description: The known_hosts file an ssh repository's host key is checked against.
            type: path
            aliases: [knownHosts]
          verify:
            description: Refuse a ref without a good signature; exactly one of the two.
            type: dict
            suboptions:
              allowed_signers:
                description: An ssh allowed_signers file (ssh signatures).
                type: path
                aliases: [allowedSigners]
              gpg_keyring:
                description: A gpg keyring (OpenPGP signatures).
                type: path
                aliases: [gpgKeyring]
      headers:
        description:
          - HTTP request headers. A value is a literal string, or a dict with one key, C(fromFile) (an absolute
            path) or C(fromEnv) (a variable of tether's environment), read by tether at download time.
          - Literal values end up in the manifest; prefer C(fromFile) for secrets.
        type: dict
      sha256:
        description: Expected sha256 of the artifact, verified before anything is activated.
        type: str
      format:
        description: Archive format; V(auto) detects it by its magic bytes; V(deb) is a Debian package (its maintainer scripts are not run).
        type: str
        choices: [auto, tar, tar.gz, tar.bz2, tar.xz, tar.zst, zip, deb]
      deb_root:
        description: For a Debian package, the subtree deployed, relative to the package's root, such as V(opt/acme).
        type: str
        aliases: [debRoot]
      strip_components:
        description: V(auto) strips a single common top-level directory; a number strips that many leading components.
        type: raw
        aliases: [stripComponents]
      limits:
        description: Limits that refuse archive bombs.
        type: dict
        suboptions:
          max_bytes:
            description: Total uncompressed bytes.
            type: int
            aliases: [maxBytes]
          max_members:
            description: Number of archive members.
            type: int
            aliases: [maxMembers]
          max_ratio:
            description: Uncompressed to compressed bytes.
            type: float
            aliases: [maxRatio]
  user:
    description: Owner of the deployments; hooks run as this user (C(spec.user)).
    type: str
  group:
    description: Group of the deployments (C(spec.group)).
    type: str
  user_mapping:
    description: C(.mtree) user names to local users (C(spec.userMapping)).
    type: dict
  group_mapping:
    description: C(.mtree) group names to local groups (C(spec.groupMapping)); tether's default is O(user_mapping).
    type: dict
  retention:
    description: Complete deployments kept (C(spec.retention.keep)); the active and the previous one are always kept.
    type: int
  hooks:
    description:
      - The application's own lifecycle hooks (C(spec.hooks)); they run after the kind's.
      - "Each is an inline script (without a shebang it runs under C(/bin/sh)) or a dict C({path: /absolute/executable})."
    type: dict
    suboptions:
      before_deploy:
        description: Runs before a new deployment is extracted.
        type: raw
        aliases: [beforeDeploy]
      after_deploy:
        description: Runs after a new deployment is extracted.
        type: raw
        aliases: [afterDeploy]
      before_activate:
        description: Runs before C(current) is switched; a failure leaves C(current) where it was.
        type: raw
        aliases: [beforeActivate]
      after_activate:
        description: Runs after C(current) is switched; a failure switches back (see O(rollback_on_failure)).
        type: raw
        aliases: [afterActivate]
  hook_timeout:
    description: Seconds after which a running hook is terminated (C(spec.hookTimeoutSeconds)).
    type: float
  persistent_data:
    description: V(auto) applies a deployment's C(.mtree) when present; V(off) ignores it (C(spec.persistentData)).
    type: str
    choices: [auto, 'off']
  rollback_on_failure:
    description: Switch back to the previous deployment when C(afterActivate) fails (C(spec.rollbackOnFailure)).
    type: bool
  drift:
    description: V(correct) repairs drift, V(report) only reports it (C(spec.drift)).
    type: str
    choices: [correct, report]
  drift_ignore:
    description: Globs of deployment paths exempt from content drift (C(spec.driftIgnore)).
    type: list
    elements: str
  suspend:
    description: Stop reconciling this application (C(spec.suspend)).
    type: bool
  rollout:
    description:
      - Bring O(deployment) to the fleet in waves (C(spec.rollout)); each node decides alone from its name and labels
        (the node file, see M(tether.node.tether_node)) and the clock. Needs O(deployment).
    type: dict
    suboptions:
      from:
        description: What nodes not yet in an open wave run; must differ from O(deployment).
        type: str
        required: true
      id:
        description: Salt of the bucket hash; tether's default is O(deployment).
        type: str
      started_at:
        description: When the rollout starts, an RFC 3339 UTC timestamp such as V(2026-12-01T10:00:00Z); quote it.
        type: str
        required: true
        aliases: [startedAt]
      waves:
        description: The waves in order; a node belongs to the first whose selector matches its labels or whose percent is above its bucket.
        type: list
        elements: dict
        required: true
        suboptions:
          selector:
            description: Node labels that must all be equal to these.
            type: dict
          percent:
            description: Share of all nodes, by bucket (two decimals at most).
            type: float
          after:
            description: When the wave opens, counted from O(rollout.started_at), such as V(30s), V(30m), V(2h).
            type: str
      gate:
        description: Waves after the first open only while this Prometheus query returns no series.
        type: dict
        suboptions:
          prometheus:
            description: Base URL of the Prometheus server.
            type: str
            required: true
          query:
            description: PromQL; the gate holds while it returns a series.
            type: str
            required: true
          interval_seconds:
            description: How often the query is asked while a wave waits.
            type: float
            aliases: [intervalSeconds]
          timeout_seconds:
            description: A query taking longer counts as closed.
            type: float
            aliases: [timeoutSeconds]
  health_check:
    description:
      - Probes run after the C(afterActivate) hooks (C(spec.healthCheck)); exactly one of O(health_check.http) and
        O(health_check.command).
    type: dict
    suboptions:
      http:
        description: GET a URL; redirects are not followed.
        type: dict
        suboptions:
          url:
            description: http(s):// URL, without credentials.
            type: str
            required: true
          expect_status:
            description: Status codes that pass; tether's default is V([200]).
            type: list
            elements: int
            aliases: [expectStatus]
      command:
        description: "An inline script or C({path: /absolute/executable}), run like a hook; exit 0 passes."
        type: raw
      interval_seconds:
        description: From the start of one probe to the start of the next.
        type: float
        aliases: [intervalSeconds]
      timeout_seconds:
        description: One probe taking longer fails.
        type: float
        aliases: [timeoutSeconds]
      healthy_seconds:
        description: Probes must pass continuously this long.
        type: float
        aliases: [healthySeconds]
      deadline_seconds:
        description: Not healthy this long after probing started is a failed activation.
        type: float
        aliases: [deadlineSeconds]
  validate:
    description:
      - Run C(tether validate) on the new manifest, together with the other manifests of O(manifests_dir),
        before it is moved in place; an invalid manifest fails the task and changes nothing.
    type: bool
    default: false
  tether_bin:
    description: The C(tether) command; default C(tether) on the PATH, else C(/usr/bin/tether).
    type: path
  state_dir:
    description: tether's state directory (its C(--state-dir) option), read by O(wait); default tether's own.
    type: path
  wait:
    description:
      - After writing the manifest, poll C(tether status <name> --json) until tether has reconciled this very
        manifest (its status C(observedGeneration) is the sha256 of the file) and reports Ready with the
        desired deployment current.
      - Fails at once when the status of this manifest says Stalled, or Ready is False because the pass
        failed or the manifest is invalid, with tether's C(lastError).
      - Needs a running C(tether run) daemon (or someone running C(tether reconcile)). Not done in check mode,
        nor with O(state=absent).
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait before the task fails.
    type: float
    default: 300
  wait_interval:
    description: Seconds between two polls of the status.
    type: float
    default: 1
notes:
  - tether refuses manifests not owned by root or by its own user, or writable by group or others; this module
    writes them C(0644), owned by root when it runs as root.
  - Header values given as literals are hidden from Ansible's output, but are stored in the manifest file.
seealso:
  - name: tether design reference
    description: docs/design.md, sections 2 (manifests) and 7 (status and commands).
    link: https://tether.invalid/docs/design.md
"""

EXAMPLES = r"""
- name: Deploy the shop, version 1.4.2, and wait until it is live
  tether.node.tether_application:
    name: shop
    environment: production
    path: /opt/shop
    deployment: "1.4.2"
    source:
      url: "https://git.example.com/api/v4/projects/42/packages/generic/shop/{deployment}/shop.tar.gz"
      headers:
        JOB-TOKEN: {fromFile: /etc/tether/secrets/shop-token}
      sha256: "{{ shop_sha256 }}"
    user: deploy
    group: deploy
    retention: 3
    hooks:
      after_activate: |
        #!/bin/sh
        set -e
        systemctl reload shop
    validate: true
    wait: true
    wait_timeout: 600

- name: Deploy a signed tag of a git repository over ssh
  tether.node.tether_application:
    name: tools
    path: /opt/tools
    deployment: v3.0.1
    source:
      git:
        url: ssh://git@git.example.com/tools.git
        ssh_key: {fromFile: /etc/tether/secrets/tools-key}
        known_hosts: /etc/tether/known_hosts
        verify: {allowed_signers: /etc/tether/keys/tools.allowed_signers}

- name: Let CI choose the deployment with `tether deploy`
  tether.node.tether_application:
    name: blog
    path: /srv/blog
    source:
      url: "https://artifacts.example.com/blog/{deployment}.tar.gz"

- name: Stop managing the old site (its files stay on disk)
  tether.node.tether_application:
    name: oldsite
    state: absent
"""

RETURN = r"""
path:
  description: The manifest file.
  returned: always
  type: str
  sample: /etc/tether/manifests/shop.yaml
manifest:
  description: The manifest document as written.
  returned: when O(state=present)
  type: dict
  sample: {apiVersion: tether/v1, kind: Application, metadata: {name: shop}, spec: {path: /opt/shop, deployment: "1.4.2"}}
generation:
  description: The sha256 of the manifest text; tether reports it as C(observedGeneration) once it has read this manifest.
  returned: when O(state=present)
  type: str
  sample: 3c9a0f5e0d4b1e2f8a7c6b5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f
validation:
  description: The output of C(tether validate --json) (problems of the other manifests included).
  returned: when O(validate=true) and the manifest changed
  type: dict
status:
  description:
    - tether's status of the application (C(tether status <name> --json)) at the end of the wait, or the last
      one seen when the wait failed.
  returned: when O(wait=true)
  type: dict
  sample: {name: shop, desired: "1.4.2", current: "1.4.2", conditions: [{type: Ready, status: "True", reason: Converged}]}
waited:
  description: Seconds spent waiting for tether.
  returned: when O(wait=true)
  type: float
  sample: 2.4
"""

import datetime
import hashlib
import inspect
import json
import math
import os
import re
import tempfile
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import yaml
except ImportError:
    yaml = None
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    YAML_IMPORT_ERROR = None

NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?")
FILE_MODE = 0o644
DIRECTORY_MODE = 0o755
HEADER = "# Written by Ansible (tether.node.tether_application); local changes are overwritten.\n"
# (option, manifest key) in the order the manifest lists them
HOOK_PHASES = (("before_deploy", "beforeDeploy"), ("after_deploy", "afterDeploy"),
               ("before_activate", "beforeActivate"), ("after_activate", "afterActivate"))
LIMITS = (("max_bytes", "maxBytes"), ("max_members", "maxMembers"), ("max_ratio", "maxRatio"))
# Files tether ignores in a manifests directory (design section 2)
IGNORED_SUFFIXES = ("~", ".swp", ".swo", ".tmp", ".bak")
IGNORED_INFIXES = (".dpkg-", ".rpm")

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "manifests_dir": {"type": "path", "default": "/etc/tether/manifests"},
    "labels": {"type": "dict"},
    "application": {"type": "str"},
    "environment": {"type": "str"},
    "path": {"type": "path"},
    "kind": {"type": "str"},
    "deployment": {"type": "str"},
    "source": {
        "type": "dict",
        "mutually_exclusive": [["url", "git"]],
        "required_one_of": [["url", "git"]],
        "options": {
            "url": {"type": "str"},
            "git": {
                "type": "dict",
                "options": {
                    "url": {"type": "str", "required": True},
                    "ref": {"type": "str"},
                    "lfs": {"type": "str", "choices": ["refuse", "ignore"]},
                    "subdirectory": {"type": "str"},
                    "headers": {"type": "dict", "no_log": True},
                    "ssh_key": {"type": "dict", "aliases": ["sshKey"], "options": {
                        "from_file": {"type": "path", "required": True, "aliases": ["fromFile"]}}},
                    "known_hosts": {"type": "path", "aliases": ["knownHosts"]},
                    "verify": {"type": "dict", "mutually_exclusive": [["allowed_signers", "gpg_keyring"]],
                               "required_one_of": [["allowed_signers", "gpg_keyring"]], "options": {
                                   "allowed_signers": {"type": "path", "aliases": ["allowedSigners"]},
                                   "gpg_keyring": {"type": "path", "aliases": ["gpgKeyring"]}}},
                },
            },
            "headers": {"type": "dict", "no_log": True},
            "sha256": {"type": "str"},
            "format": {"type": "str",
                       "choices": ["auto", "tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "zip", "deb"]},
            "deb_root": {"type": "str", "aliases": ["debRoot"]},
            "strip_components": {"type": "raw", "aliases": ["stripComponents"]},
            "limits": {
                "type": "dict",
                "options": {
                    "max_bytes": {"type": "int", "aliases": ["maxBytes"]},
                    "max_members": {"type": "int", "aliases": ["maxMembers"]},
                    "max_ratio": {"type": "float", "aliases": ["maxRatio"]},
                },
            },
        },
    },
    "user": {"type": "str"},
    "group": {"type": "str"},
    "user_mapping": {"type": "dict"},
    "group_mapping": {"type": "dict"},
    "retention": {"type": "int"},
    "hooks": {
        "type": "dict",
        "options": {
            option: {"type": "raw", "aliases": [key]} for option, key in HOOK_PHASES
        },
    },
    "hook_timeout": {"type": "float"},
    "persistent_data": {"type": "str", "choices": ["auto", "off"]},
    "rollback_on_failure": {"type": "bool"},
    "drift": {"type": "str", "choices": ["correct", "report"]},
    "drift_ignore": {"type": "list", "elements": "str"},
    "suspend": {"type": "bool"},
    "rollout": {
        "type": "dict",
        "options": {
            "from": {"type": "str", "required": True},
            "id": {"type": "str"},
            "started_at": {"type": "str", "required": True, "aliases": ["startedAt"]},
            "waves": {"type": "list", "elements": "dict", "required": True, "options": {
                "selector": {"type": "dict"}, "percent": {"type": "float"}, "after": {"type": "str"}}},
            "gate": {"type": "dict", "options": {
                "prometheus": {"type": "str", "required": True},
                "query": {"type": "str", "required": True},
                "interval_seconds": {"type": "float", "aliases": ["intervalSeconds"]},
                "timeout_seconds": {"type": "float", "aliases": ["timeoutSeconds"]},
            }},
        },
    },
    "health_check": {
        "type": "dict",
        "options": {
            "http": {"type": "dict", "options": {
                "url": {"type": "str", "required": True},
                "expect_status": {"type": "list", "elements": "int", "aliases": ["expectStatus"]},
            }},
            "command": {"type": "raw"},
            "interval_seconds": {"type": "float", "aliases": ["intervalSeconds"]},
            "timeout_seconds": {"type": "float", "aliases": ["timeoutSeconds"]},
            "healthy_seconds": {"type": "float", "aliases": ["healthySeconds"]},
            "deadline_seconds": {"type": "float", "aliases": ["deadlineSeconds"]},
        },
    },
    "validate": {"type": "bool", "default": False},
    "tether_bin": {"type": "path"},
    "state_dir": {"type": "path"},
    "wait": {"type": "bool", "default": False},
    "wait_timeout": {"type": "float", "default": 300},
    "wait_interval": {"type": "float", "default": 1},
}


class Refused(Exception):
    """An option's value cannot go into a manifest."""


# ---------------------------------------------------------------- the manifest


def _number(value):
    """A float that is a whole number as an int, so that YAML shows 600 rather than 600.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _strings(mapping, what):
    """A dict of strings, sorted by key."""
    for key, value in mapping.items():
        if isinstance(value, (dict, list)) or value is None:
            raise Refused(f"{what}: the value of {key!r} must be a string")
    return {str(key): str(mapping[key]) for key in sorted(mapping, key=str)}


def _header_value(key, value):
    if isinstance(value, dict):
        spelled = {"from_file": "fromFile", "from_env": "fromEnv"}
        converted = {spelled.get(k, k): v for k, v in value.items()}
        if len(converted) != 1 or next(iter(converted)) not in ("fromFile", "fromEnv"):
            raise Refused(f"source.headers: the value of {key!r} must be a string, {{fromFile: PATH}} or {{fromEnv: NAME}}")
        return {k: str(v) for k, v in converted.items()}
    if isinstance(value, list) or value is None:
        raise Refused(f"source.headers: the value of {key!r} must be a string, {{fromFile: PATH}} or {{fromEnv: NAME}}")
    return str(value)


def _headers(headers):
    return {str(k): _header_value(k, headers[k]) for k in sorted(headers, key=str)}


def _git(git):
    """spec.source.git, with the schema's key names, in its order."""
    document = {key: git[key] for key in ("url", "ref", "lfs", "subdirectory") if git.get(key) is not None}
    if git.get("headers") is not None:
        document["headers"] = _headers(git["headers"])
    if git.get("ssh_key") is not None:
        document["sshKey"] = {"fromFile": git["ssh_key"]["from_file"]}
    if git.get("known_hosts") is not None:
        document["knownHosts"] = git["known_hosts"]
    verify = git.get("verify")
    if verify is not None:
        document["verify"] = ({"allowedSigners": verify["allowed_signers"]} if verify.get("allowed_signers") is not None
                              else {"gpgKeyring": verify["gpg_keyring"]})
    return document


def _source(source):
    document = {"url": source["url"]} if source.get("url") is not None else {"git": _git(source["git"])}
    if source.get("headers") is not None:
        document["headers"] = _headers(source["headers"])
    for option, key in (("sha256", "sha256"), ("format", "format"), ("deb_root", "debRoot")):
        if source.get(option) is not None:
            document[key] = source[option]
    strip = source.get("strip_components")
    if strip is not None:
        if isinstance(strip, bool) or not (strip == "auto" or isinstance(strip, int) or str(strip).isdigit()):
            raise Refused(f"source.strip_components must be auto or a number, not {strip!r}")
        document["stripComponents"] = strip if strip == "auto" else int(strip)
    limits = source.get("limits") or {}
    chosen = {key: _number(limits[option]) for option, key in LIMITS if limits.get(option) is not None}
    if chosen:
        document["limits"] = chosen
    return document


def _hook(phase, value):
    if isinstance(value, dict):
        if set(value) != {"path"}:
            raise Refused(f"{phase} must be an inline script or {{path: /absolute/executable}}")
        return {"path": str(value["path"])}
    if isinstance(value, list):
        raise Refused(f"{phase} must be an inline script or {{path: /absolute/executable}}")
    return str(value)


SECONDS = (("interval_seconds", "intervalSeconds"), ("timeout_seconds", "timeoutSeconds"),
           ("healthy_seconds", "healthySeconds"), ("deadline_seconds", "deadlineSeconds"))


def _given(pairs, options):
    """{manifest key: value} of the options set, whole numbers as ints."""
    return {key: _number(options[option]) for option, key in pairs if options.get(option) is not None}


def _rollout(rollout):
    document = {"from": rollout["from"]}
    if rollout.get("id") is not None:
        document["id"] = rollout["id"]
    document["startedAt"] = rollout["started_at"]
    waves = []
    for number, wave in enumerate(rollout["waves"], 1):
        one = {}
        if wave.get("selector") is not None:
            # an unquoted true in YAML is the label value "true" of the node file, not Python's "True"
            selector = {k: str(v).lower() if isinstance(v, bool) else v for k, v in wave["selector"].items()}
            one["selector"] = _strings(selector, f"rollout.waves[{number}].selector")
        one.update(_given((("percent", "percent"), ("after", "after")), wave))
        waves.append(one)
    document["waves"] = waves
    if rollout.get("gate") is not None:
        gate = rollout["gate"]
        document["gate"] = {"prometheus": gate["prometheus"], "query": gate["query"], **_given(SECONDS[:2], gate)}
    return document


def _health_check(check):
    document = {}
    if check.get("http") is not None:
        http = check["http"]
        document["http"] = {"url": http["url"]}
        if http.get("expect_status") is not None:
            document["http"]["expectStatus"] = http["expect_status"]
    if check.get("command") is not None:
        document["command"] = _hook("health_check.command", check["command"])
    document.update(_given(SECONDS, check))
    return document


def manifest_document(params):
    """The Application manifest the options describe, keys in the order of the schema."""
    metadata = {"name": params["name"]}
    if params["labels"] is not None:
        metadata["labels"] = _strings(params["labels"], "labels")
    spec = {}

    def put(key, value):
        if value is not None:
            spec[key] = value

    put("application", params["application"])
    put("environment", params["environment"])
    put("path", params["path"])
    put("kind", params["kind"])
    put("deployment", params["deployment"])
    put("source", _source(params["source"]) if params["source"] is not None else None)
    put("user", params["user"])
    put("group", params["group"])
    put("userMapping", _strings(params["user_mapping"], "user_mapping") if params["user_mapping"] is not None else None)
    put("groupMapping", _strings(params["group_mapping"], "group_mapping") if params["group_mapping"] is not None else None)
    put("retention", {"keep": params["retention"]} if params["retention"] is not None else None)
    if params["hooks"] is not None:
        spec["hooks"] = {key: _hook(f"hooks.{option}", params["hooks"][option])
                         for option, key in HOOK_PHASES if params["hooks"].get(option) is not None}
    put("hookTimeoutSeconds", _number(params["hook_timeout"]))
    put("persistentData", params["persistent_data"])
    put("rollbackOnFailure", params["rollback_on_failure"])
    put("drift", params["drift"])
    put("driftIgnore", params["drift_ignore"])
    put("suspend", params["suspend"])
    put("rollout", _rollout(params["rollout"]) if params["rollout"] is not None else None)
    put("healthCheck", _health_check(params["health_check"]) if params["health_check"] is not None else None)
    return {"apiVersion": "tether/v1", "kind": "Application", "metadata": metadata, "spec": spec}


def render(document):
    """Deterministic YAML: keys in the order given, multi-line strings as literal blocks, no aliases, no folding."""

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    def text(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    body = yaml.dump(document, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=1_000_000)
    return HEADER + body


# ---------------------------------------------------------------- files


def read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def hide_header_values(module, text):
    """Keep the header values of a manifest already on disk out of Ansible's output (its diff), like the new ones."""
    try:
        source = yaml.safe_load(text)["spec"]["source"]
    except Exception:  # not a manifest with a source: nothing to hide
        return
    if not isinstance(source, dict):
        return
    git, values = source.get("git"), []
    for headers in (source.get("headers"), git.get("headers") if isinstance(git, dict) else None):
        values += list(headers.values()) if isinstance(headers, dict) else []
    for value in values:
        for item in value.values() if isinstance(value, dict) else [value]:
            if isinstance(item, str) and item:
                module.no_log_values.add(item)


def wanted_owner():
    """(uid, gid) the manifest should have: root's when running as root, else whatever it gets."""
    return (0, 0) if os.geteuid() == 0 else None


def attributes_differ(path):
    """{'mode': ..., 'owner': ...} before and after, for what differs from what tether needs."""
    st = os.stat(path)
    before, after = {}, {}
    if st.st_mode & 0o7777 != FILE_MODE:
        before["mode"], after["mode"] = f"{st.st_mode & 0o7777:04o}", f"{FILE_MODE:04o}"
    owner = wanted_owner()
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        before["owner"], after["owner"] = f"{st.st_uid}:{st.st_gid}", f"{owner[0]}:{owner[1]}"
    return before, after


def fix_attributes(path):
    os.chmod(path, FILE_MODE)
    owner = wanted_owner()
    if owner is not None:
        os.chown(path, *owner)


def fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(module, directory, destination, data):
    """Write `data` to a dotfile beside `destination`, give it tether's attributes, rename it into place."""
    if not os.path.isdir(directory):
        os.makedirs(directory, DIRECTORY_MODE)
        os.chmod(directory, DIRECTORY_MODE)
    name = os.path.basename(destination)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fix_attributes(temporary)
        # The file must never be visible with another mode: do not copy the old file's attributes, and let
        # a new file get 0644 from the umask when atomic_move sets the mode from it.
        keyword = {"keep_dest_attrs": False} if "keep_dest_attrs" in inspect.signature(module.atomic_move).parameters else {}
        umask = os.umask(0o022)
        try:
            module.atomic_move(temporary, destination, **keyword)
        finally:
            os.umask(umask)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    fix_attributes(destination)
    fsync_directory(directory)


def other_manifests(directory, destination):
    """The files tether would read from `directory`, except `destination`."""
    if not os.path.isdir(directory):
        return []
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith((".yaml", ".yml")) or name.endswith(IGNORED_SUFFIXES):
                continue
            if any(infix in name for infix in IGNORED_INFIXES) or not entry.is_file():
                continue
            if os.path.abspath(entry.path) != os.path.abspath(destination):
                found.append(entry.path)
    return sorted(found)


# ---------------------------------------------------------------- tether


def tether_command(module):
    given = module.params["tether_bin"]
    command = given or module.get_bin_path("tether") or "/usr/bin/tether"
    if not (os.path.isfile(command) and os.access(command, os.X_OK)):
        where = "tether_bin" if given else "the PATH and /usr/bin/tether"
        module.fail_json(msg=f"the tether command was not found at {command} (from {where}); set tether_bin")
    return command


def validate(module, tether, directory, destination, data):
    """Run `tether validate` on `data` as the manifest `destination`, with the other manifests; return its report."""
    checking = os.path.join(module.tmpdir, os.path.basename(destination))
    with open(checking, "wb") as handle:
        handle.write(data)
    rc, out, err = module.run_command([tether, "validate", "--json", checking, *other_manifests(directory, destination)])
    try:
        report = json.loads(out)
    except ValueError:
        module.fail_json(msg=f"tether validate failed (exit code {rc}): {err.strip() or out.strip()}")
    mine = [p for p in report.get("problems", []) if p.get("file") == checking]
    others = [p for p in report.get("problems", []) if p.get("file") != checking]
    for problem in mine:
        problem["file"] = destination
    if others:
        module.warn(f"tether finds other manifests in {directory} invalid: "
                    + "; ".join(f"{p['file']}: {p['message']}" for p in others))
    if mine:
        described = "; ".join(
            f"{destination}{':' + str(p['line']) if p.get('line') else ''}: {p['message']}"
            + (f" (at {p['pointer']})" if p.get("pointer") else "")
            for p in mine)
        module.fail_json(msg=f"tether refuses the manifest, which was not written: {described}", problems=mine,
                         manifest_text=data.decode("utf-8"))
    if rc not in (0, 2):
        module.fail_json(msg=f"tether validate failed (exit code {rc}): {err.strip()}")
    return report


def condition(document, kind):
    return next((c for c in document.get("conditions") or [] if c.get("type") == kind), {})


def seconds(stamp):
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


def judge(document, generation, written_at):
    """What a status says about the manifest just written: ('done'|'failed'|'waiting', explanation)."""
    if document is None:
        return "waiting", "tether has no status for it yet; is `tether run` running?"
    ready, stalled = condition(document, "Ready"), condition(document, "Stalled")
    error = document.get("lastError") or ready.get("message") or ""
    if document.get("observedGeneration") != generation:
        # An invalid manifest leaves the last good generation in the status; only its time tells it is ours.
        updated = seconds(document.get("updatedAt"))
        if ready.get("reason") == "InvalidManifest" and updated is not None and updated >= written_at:
            return "failed", f"tether refuses the manifest: {error}"
        return "waiting", "tether has not reconciled this version of the manifest yet"
    if stalled.get("status") == "True":
        return "failed", f"tether stalled: {error}"
    if ready.get("status") == "True":
        return "done", ""
    reason = ready.get("reason")
    if reason in ("Failed", "InvalidManifest"):
        retry = document.get("nextAttemptAt")
        return "failed", f"tether failed to deploy it: {error}" + (f" (next attempt at {retry})" if retry else "")
    if reason in ("Suspended", "NoDesiredDeployment"):
        return "done", reason
    return "waiting", f"{reason}: {ready.get('message', '')}"


def wait_for_tether(module, tether, name, generation, destination, result):
    params = module.params
    command = [tether, "status", name, "--json", "--manifests", params["manifests_dir"]]  # it reads them too
    if params["state_dir"]:
        command += ["--state-dir", params["state_dir"]]
    written_at = math.floor(os.stat(destination).st_mtime)
    started = time.monotonic()
    deadline = started + params["wait_timeout"]
    while True:
        rc, out, err = module.run_command(command)
        document = None
        if rc == 0:
            try:
                document = json.loads(out)
            except ValueError:
                module.fail_json(msg=f"tether status printed something other than JSON: {out[:200]!r}", **result)
        elif not (rc == 2 and "no status" in err):
            module.fail_json(msg=f"tether status failed (exit code {rc}): {err.strip()}", **result)
        verdict, explanation = judge(document, generation, written_at)
        result["status"] = document
        result["waited"] = round(time.monotonic() - started, 3)
        if verdict == "failed":
            module.fail_json(msg=explanation, **result)
        if verdict == "done":
            if explanation == "Suspended" and not params["suspend"]:
                module.warn(f"{name} is suspended (`tether suspend`): tether has read the manifest but deploys nothing "
                            "until `tether resume`")
            desired = document.get("desired")
            if params["deployment"] is not None and desired not in (None, params["deployment"]):
                module.warn(f"tether's desired deployment of {name} is {desired}, not {params['deployment']}: "
                            "`tether deploy`, `activate` or `rollback` set it, and it holds until the manifest changes")
            return
        if time.monotonic() >= deadline:
            module.fail_json(msg=f"gave up after {params['wait_timeout']:g} s waiting for tether to deploy {name}: "
                             f"{explanation}", **result)
        time.sleep(params["wait_interval"])


# ---------------------------------------------------------------- the module


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "present", ("path",))])
    if yaml is None:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMPORT_ERROR)
    params = module.params
    name = params["name"]
    if not NAME_PATTERN.fullmatch(name):
        module.fail_json(msg=f"{name!r} is not a valid tether application name: lower-case letters, digits, '.', "
                             "'_' and '-', starting and ending with a letter or digit, at most 63 characters")
    for option in ("wait_timeout", "wait_interval"):
        if params[option] < 0:
            module.fail_json(msg=f"{option} cannot be negative")
    directory = params["manifests_dir"]
    destination = os.path.join(directory, name + ".yaml")
    if os.path.lexists(destination) and not (os.path.islink(destination) or os.path.isfile(destination)):
        module.fail_json(msg=f"{destination} exists and is not a file; remove it")
    before = read_text(destination)
    if before is not None:
        hide_header_values(module, before)
    result = {"changed": False, "path": destination}
    diffs = []

    if params["state"] == "absent":
        if os.path.lexists(destination):
            result["changed"] = True
            diffs.append({"before": before or "", "after": "", "before_header": destination, "after_header": destination})
            if not module.check_mode:
                os.unlink(destination)
                fsync_directory(directory)
        if module._diff:
            result["diff"] = diffs
        module.exit_json(**result)

    try:
        document = manifest_document(params)
    except Refused as exc:
        module.fail_json(msg=str(exc))
    text = render(document)
    data = text.encode("utf-8")
    generation = hashlib.sha256(data).hexdigest()
    result.update(manifest=document, generation=generation)
    needs_tether = params["validate"] or (params["wait"] and not module.check_mode)
    tether = tether_command(module) if needs_tether else None

    if before != text:
        result["changed"] = True
        diffs.append({"before": before or "", "after": text, "before_header": destination, "after_header": destination})
        if params["validate"]:
            result["validation"] = validate(module, tether, directory, destination, data)
        if not module.check_mode:
            write_manifest(module, directory, destination, data)
    else:
        old, new = attributes_differ(destination)
        if old:
            result["changed"] = True
            diffs.append({"before": old, "after": new, "before_header": f"{destination} (attributes)",
                          "after_header": f"{destination} (attributes)"})
            if not module.check_mode:
                fix_attributes(destination)
    if module._diff:
        result["diff"] = diffs

    if params["wait"] and not module.check_mode:
        wait_for_tether(module, tether, name, generation, destination, result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
