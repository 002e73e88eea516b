#!/usr/bin/python
# Copyright: the tether authors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Ansible module: write this node's tether node file (its name and labels, which rollout waves use)."""
# ruff: noqa: E402

from __future__ import annotations

DOCUMENTATION = r"""
module: tether_node
short_description: Give a node its tether identity, the name and labels rollout waves use
version_added: "0.2.0"
description:
  - "Writes tether's node file (a C(Node) document, default C(/etc/tether/node.yaml), tether's C(--node-config)) from
    O(name) and O(labels). Without the file tether takes the host name and no labels."
  - The file is written to a temporary dotfile in the same directory and renamed into place, owned by root (when
    the module runs as root) with mode C(0644), as tether requires. The daemon reads it again at every rescan.
  - The YAML is deterministic (labels sorted), so unchanged options report C(changed=false).
author:
  - the tether authors
requirements:
  - PyYAML on the managed node (ansible-core depends on it)
  - the C(tether) command on the managed node when O(validate=true)
attributes:
  check_mode:
    description: Reports what would change and writes nothing; validation still runs.
    support: full
  diff_mode:
    description: Shows the file's text before and after, and changed file attributes.
    support: full
options:
  name:
    description:
      - The node's name (C(metadata.name)), which the rollout bucket hashes; a lower-case host name.
      - Required when O(state=present).
    type: str
  labels:
    description:
      - Labels that rollout wave selectors match (C(metadata.labels)). Values are strings; quote V("true").
    type: dict
  path:
    description: The node file (tether's C(--node-config)); its directory must exist.
    type: path
    default: /etc/tether/node.yaml
  state:
    description: V(present) writes the file; V(absent) removes it, and tether then uses the host name.
    type: str
    choices: [present, absent]
    default: present
  validate:
    description: Check the new file with C(tether node --node-config) before it is moved in place; an invalid one fails the task and changes nothing.
    type: bool
    default: false
  tether_bin:
    description: The C(tether) command; default C(tether) on the PATH, else C(/usr/bin/tether).
    type: path
seealso:
  - module: tether.node.tether_application
"""

EXAMPLES = r"""
- name: The first web server is the canary of every rollout
  tether.node.tether_node:
    name: "{{ inventory_hostname }}"
    labels:
      canary: "{{ 'true' if inventory_hostname == groups['web'][0] else 'false' }}"
      zone: eu-1
    validate: true
"""

RETURN = r"""
path:
  description: The node file.
  returned: always
  type: str
  sample: /etc/tether/node.yaml
node:
  description: The node document as written.
  returned: when O(state=present)
  type: dict
  sample: {apiVersion: tether/v1, kind: Node, metadata: {name: web-1, labels: {canary: "true"}}}
"""

import json
import os
import tempfile
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import yaml
except ImportError:
    yaml = None
    YAML_IMPORT_ERROR = traceback.format_exc()
else:
    YAML_IMPORT_ERROR = None

FILE_MODE = 0o644
HEADER = "# Written by Ansible (tether.node.tether_node); local changes are overwritten.\n"

ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "labels": {"type": "dict"},
    "path": {"type": "path", "default": "/etc/tether/node.yaml"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "validate": {"type": "bool", "default": False},
    "tether_bin": {"type": "path"},
}


def document(params):
    metadata = {"name": params["name"]}
    labels = params["labels"] or {}
    for key, value in labels.items():
        if isinstance(value, (dict, list)) or value is None:
            raise ValueError(f"labels: the value of {key!r} must be a string")
    if labels:
        # an unquoted true in YAML is the label value "true", as rollout selectors write it
        metadata["labels"] = {str(k): str(v).lower() if isinstance(v, bool) else str(v)
                              for k, v in sorted(labels.items(), key=lambda item: str(item[0]))}
    return {"apiVersion": "tether/v1", "kind": "Node", "metadata": metadata}


def render(node):
    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    return HEADER + yaml.dump(node, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                              width=1_000_000)


def read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def wanted_owner():
    return (0, 0) if os.geteuid() == 0 else None


def fix_attributes(path):
    os.chmod(path, FILE_MODE)
    if wanted_owner() is not None:
        os.chown(path, *wanted_owner())


def attributes_differ(path):
    st = os.stat(path)
    before, after = {}, {}
    if st.st_mode & 0o7777 != FILE_MODE:
        before["mode"], after["mode"] = f"{st.st_mode & 0o7777:04o}", f"{FILE_MODE:04o}"
    owner = wanted_owner()
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        before["owner"], after["owner"] = f"{st.st_uid}:{st.st_gid}", f"{owner[0]}:{owner[1]}"
    return before, after


def fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(module, destination, data):
    """A dotfile beside `destination` (fsynced, 0644, root's), renamed over it: never seen half written."""
    directory = os.path.dirname(destination)
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(destination)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        fix_attributes(temporary)
        os.rename(temporary, destination)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    fsync_directory(directory)


def validate(module, data):
    given = module.params["tether_bin"]
    tether = given or module.get_bin_path("tether") or "/usr/bin/tether"
    if not (os.path.isfile(tether) and os.access(tether, os.X_OK)):
        module.fail_json(msg=f"the tether command was not found at {tether}; set tether_bin")
    checking = os.path.join(module.tmpdir, "node.yaml")
    with open(checking, "wb") as handle:
        handle.write(data)
    os.chmod(checking, FILE_MODE)
    rc, out, err = module.run_command([tether, "node", "--json", "--node-config", checking,
                                       "--manifests", module.tmpdir])
    if rc != 0:
        try:
            said = json.loads(out)["error"].replace(checking, module.params["path"])
        except (ValueError, KeyError, TypeError, AttributeError):
            said = err.strip() or out.strip()
        module.fail_json(msg=f"tether refuses the node file, which was not written: {said}")


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_if=[("state", "present", ("name",))])
    if yaml is None:
        module.fail_json(msg=missing_required_lib("PyYAML"), exception=YAML_IMPORT_ERROR)
    destination = module.params["path"]
    if os.path.lexists(destination) and not os.path.isfile(destination):
        module.fail_json(msg=f"{destination} exists and is not a file; remove it")
    before = read_text(destination)
    result, diffs = {"changed": False, "path": destination}, []
    if module.params["state"] == "absent":
        if before is not None:
            result["changed"] = True
            diffs.append({"before": before, "after": "", "before_header": destination, "after_header": destination})
            if not module.check_mode:
                os.unlink(destination)
    else:
        try:
            node = document(module.params)
        except ValueError as exc:
            module.fail_json(msg=str(exc))
        text = render(node)
        result["node"] = node
        if before != text:
            result["changed"] = True
            diffs.append({"before": before or "", "after": text, "before_header": destination,
                          "after_header": destination})
            if module.params["validate"]:
                validate(module, text.encode("utf-8"))
            if not module.check_mode:
                write_file(module, destination, text.encode("utf-8"))
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
    module.exit_json(**result)


if __name__ == "__main__":
    main()
