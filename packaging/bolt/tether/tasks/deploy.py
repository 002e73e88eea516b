#!/usr/bin/env python3
"""Bolt/Choria task tether::deploy: deploy an artifact to one tether application and wait for the outcome.

The implementation is ../files/tether_task.py (the task metadata ships it in "files"): Bolt and
Choria copy it to <_installdir>/tether/files/, beside <_installdir>/tether/tasks/deploy.py.
"""

import importlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for root in (os.environ.get("PT__installdir"), os.path.join(HERE, "..", "..")):  # noqa: SIM112 (Bolt spells it so)
    if root and os.path.isfile(os.path.join(root, "tether", "files", "tether_task.py")):
        sys.path.insert(0, os.path.join(root, "tether", "files"))
        break
try:
    implementation = importlib.import_module("tether_task")
except ImportError as exc:
    print(json.dumps({"_error": {"msg": f"tether::deploy cannot load tether/files/tether_task.py: {exc}",
                                 "kind": "tether/task-files-missing", "details": {}}}))
    sys.exit(1)
sys.exit(implementation.main("deploy"))
