#!/usr/bin/env python3
"""Bolt/Choria task tether::remove. The code is tether/files/tether_task.py, which the task metadata
ships ("files"): Bolt and Choria put it in <_installdir>/tether/files/, as it is in this module."""
import os
import sys

HERE = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(os.environ.get("PT__installdir") or HERE, "tether", "files"))  # noqa: SIM112
import tether_task  # noqa: E402

sys.exit(tether_task.main("remove"))
