"""The demo (`make demo`) runs end to end: real artifacts, a real HTTP server, the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import support


def test_the_demo_deploys_v1_then_leaves_every_application_on_v2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}

    run = subprocess.run([sys.executable, str(support.REPO / "examples" / "demo.py"), "--sandbox", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("site", "shop", "acme"):
        app = tmp_path / "apps" / name
        assert os.readlink(app / "current") == str(app / "v2")
    served = (tmp_path / "apps" / "site" / "current" / "index.html").read_text()
    assert served == (support.REPO / "examples" / "artifacts" / "site" / "v2" / "index.html").read_text()
    acme = tmp_path / "apps" / "acme"
    assert os.readlink(acme / "v2" / "db" / "production.sqlite3") == str(acme / "persistent-data" / "db" / "production.sqlite3")
    migrations = (acme / "persistent-data" / "db" / "production.sqlite3").read_text().splitlines()
    assert [line.split()[1] for line in migrations] == ["v1", "v2"]
    assert (acme / "persistent-data" / "tmp" / "restart.txt").exists()
