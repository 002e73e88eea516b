"""A real Prometheus scrapes a real `tether run` over TLS with basic auth (certificates made with
`openssl`): the right password makes the target up, a wrong one or none makes it down with a 401."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
import urllib.request
from pathlib import Path

from controller.daemon import web_config
from tests import certificates, support
from tests.test_prometheus import free_port, prometheus_binary, query, wait_for  # noqa: F401 (a fixture)
from tests.test_web_endpoint import ALICE, hashed, running, tls_config, write_config


def targets(port: int) -> dict[str, dict[str, str]]:
    """Each active target's job -> its health and last error, from Prometheus's API."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets?state=active", timeout=5) as response:
            answer = json.load(response)
    except OSError:
        return {}
    return {t["labels"]["job"]: {"health": t["health"], "lastError": t["lastError"]}
            for t in answer["data"]["activeTargets"]}


def test_prometheus_scrapes_over_tls_with_basic_auth_and_a_wrong_password_is_a_down_target(
        tmp_path: Path, node: support.Node, prometheus_binary: str) -> None:  # noqa: F811
    certs = certificates.make(tmp_path / "certs")
    config = write_config(certs.directory / "web.yml", tls_config(certs, users={"prometheus": hashed(ALICE, 10)}))
    (tmp_path / "password").write_text(ALICE)
    (tmp_path / "wrong").write_text("not " + ALICE)
    with running(node, "--web-config-file", str(config)) as daemon:
        target = daemon.port
        def job(name: str, password: Path | None, scheme: str = "https") -> str:
            auth = f"    basic_auth: {{username: prometheus, password_file: '{password}'}}\n" if password else ""
            return (f"  - job_name: {name}\n    scheme: {scheme}\n    tls_config: {{ca_file: '{certs.ca}'}}\n{auth}"
                    f"    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n")

        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n" + job("tether", tmp_path / "password")
            + job("wrong", tmp_path / "wrong") + job("anonymous", None) + job("plain", tmp_path / "password", "http"))
        web = free_port()
        server = subprocess.Popen(
            [prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{web}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            up = wait_for("every target scraped once", lambda: (lambda found: found if len(found) == 4 else None)(
                {labels["job"]: value for labels, value in query(web, "up")}), timeout=30)
            build = wait_for("tether_build_info through TLS", lambda: query(web, 'tether_build_info{job="tether"}'),
                             timeout=30)
            health = targets(web)
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert up == {"tether": "1", "wrong": "0", "anonymous": "0", "plain": "0"}
    assert build and build[0][1] == "1"  # type: ignore[index]
    assert health["tether"]["health"] == "up"
    for job_name in ("wrong", "anonymous"):
        assert health[job_name]["health"] == "down" and "401" in health[job_name]["lastError"], health
    assert health["plain"]["health"] == "down" and "400" in health["plain"]["lastError"], health


def test_the_operator_guides_web_config_and_scrape_config_are_what_tether_and_promtool_accept(tmp_path: Path) -> None:
    guide = (support.REPO / "docs" / "operator-guide.md").read_text()
    section = guide.split("### Exposing metrics to a central Prometheus", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)]
    assert len(blocks) == 2
    certs = certificates.make(tmp_path / "etc")
    (certs.directory / "tls").mkdir()
    shutil.copy(certs.server_cert, certs.directory / "tls" / "tether.crt")
    shutil.copy(certs.server_key, certs.directory / "tls" / "tether.key")
    web = certs.directory / "web-config.yml"
    web.write_text(blocks[0].replace("$2y$10$...", "'" + hashed(ALICE) + "'"))
    loaded = web_config.load(str(web))
    assert loaded.context is not None and set(loaded.users) == {"prometheus"}

    files = {"/etc/prometheus/tether-ca.crt": certs.ca, "/etc/prometheus/tether-password": tmp_path / "password",
             "/etc/prometheus/file_sd/tether.yml": tmp_path / "targets.yml"}
    (tmp_path / "password").write_text(ALICE)
    (tmp_path / "targets.yml").write_text("- targets: ['127.0.0.1:9731']\n")
    scrape = blocks[1]
    for documented, real in files.items():
        scrape = scrape.replace(documented, str(real))
    (tmp_path / "prometheus.yml").write_text(scrape)
    promtool = shutil.which("promtool")
    assert promtool, "this test needs promtool: apt-get install prometheus"
    checked = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

