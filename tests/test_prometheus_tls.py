"""A real Prometheus scrapes a real `tether run` over TLS with basic auth (certificates made with
`openssl`): the right password makes the target up, a wrong one or none makes it down with a 401."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

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
    assert health["plain"]["health"] == "down"
