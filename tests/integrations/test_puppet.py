"""packaging/puppet/tether: the Puppet module, applied by the real `puppet apply` (Debian's puppet 7),
writes manifests that the real `tether validate` accepts and `tether reconcile` deploys from a real
HTTP server.

Puppet gets private vardir, confdir, codedir, ssldir, publicdir, logdir and rundir under tmp_path, so
nothing reaches /etc/puppet or /var/lib/puppet. Puppet starts slowly (facts): the whole file runs
puppet five times.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import support

MODULES = support.REPO / "packaging" / "puppet"
MODULE = MODULES / "tether"
TETHER = Path(sys.executable).parent / "tether"
SECRET = "puppet-s3cret-0451"
PUPPET_DIRS = ("vardir", "confdir", "codedir", "ssldir", "publicdir", "logdir", "rundir")

# Placeholders @NAME@ are filled in by the test. The kind's hooks write where the test can look:
# an inline script (after_deploy_content) and a script Puppet copies from a file (after_activate_source).
SITE = """
class { 'tether':
  manage_package  => false,
  manage_service  => false,
  manifests_dir   => '@MANIFESTS@',
  hooks_dir       => '@HOOKS@',
  bin             => '@TETHER@',
  purge_manifests => true,
}

tether::kind { 'static':
  after_deploy_content  => @(SH),
    #!/bin/sh
    # déployé: the hook sees the application's environment and mappings
    set -e
    echo "$ENVIRONMENT $DEPLOYMENT_NAME $USER_MAPPING_app" > "$APPLICATION_PATH/../site-deployed.txt"
    | SH
  after_activate_source => '@RESTART@',
}

tether::application { 'site':
  application  => 'site',
  environment  => 'staging',
  path         => '@SITE_PATH@',
  kind         => 'static',
  deployment   => 'v1',
  source       => {
    url     => '@URL@',
    sha256  => '@SHA256@',
    headers => {
      'X-Token'     => Sensitive('@SECRET@'),
      'X-From-File' => { fromFile => '@TOKEN_FILE@' },
    },
  },
  deploy_user  => 'root',
  deploy_group => 'root',
  user_mapping => { 'app' => 'root' },
  retention    => 2,
  labels       => { 'team' => 'web' },
}

tether::application { 'later':
  path => '@LATER_PATH@',
}
"""

AFTER_DEPLOY = """#!/bin/sh
# déployé: the hook sees the application's environment and mappings
set -e
echo "$ENVIRONMENT $DEPLOYMENT_NAME $USER_MAPPING_app" > "$APPLICATION_PATH/../site-deployed.txt"
"""

RESTART = """#!/bin/sh
echo "activated $DEPLOYMENT_NAME as $USER" > "$APPLICATION_PATH/../site-activated.txt"
"""


def puppet(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `puppet` with every directory it writes to under tmp_path/puppet; never skipped."""
    found = shutil.which("puppet")
    if found is None:
        pytest.fail("puppet is not installed: install Debian's `puppet` package "
                    "(apt-get install --no-install-recommends puppet; .ci/run does)")
    home = tmp_path / "puppet"
    private = [f"--{setting}={home / setting}" for setting in PUPPET_DIRS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run([found, *args, *private], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)


def apply(tmp_path: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return puppet(tmp_path, "apply", "--detailed-exitcodes", "--color=false", f"--modulepath={MODULES}", str(site))


def tether(*args: str) -> subprocess.CompletedProcess[str]:
    assert TETHER.is_file(), f"no tether beside {sys.executable}: run `make venv`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run([str(TETHER), *args], capture_output=True, text=True, timeout=120, env=env)


def fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    assert "@" not in template.replace("@(SH)", ""), template
    return template


def test_puppet_apply_writes_manifests_that_tether_validates_and_deploys(
        tmp_path: Path, http: support.HttpServer) -> None:
    archive = support.tar_bytes(support.site("1"))
    url = http.serve("/site/v1.tar.gz", archive)
    manifests, hooks, apps, state = tmp_path / "manifests", tmp_path / "hooks", tmp_path / "apps", tmp_path / "state"
    manifests.mkdir(mode=0o775)
    manifests.chmod(0o775)  # group-writable: tether would refuse it; the class makes it 0755
    (manifests / "stray.yaml").write_text("left by hand\n")  # purge_manifests removes it
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    restart = tmp_path / "restart.sh"
    restart.write_text(RESTART)
    site_path, later_path = apps / "site", apps / "later"
    site = tmp_path / "site.pp"
    site.write_text(fill(SITE, {
        "MANIFESTS": str(manifests), "HOOKS": str(hooks), "TETHER": str(TETHER), "RESTART": str(restart),
        "SITE_PATH": str(site_path), "LATER_PATH": str(later_path), "URL": url.replace("v1", "{deployment}"),
        "SHA256": support.sha256(archive), "SECRET": SECRET, "TOKEN_FILE": str(token_file),
    }))

    first = apply(tmp_path, site)

    assert first.returncode == 2, f"the first run should change things (exit 2):\n{first.stdout}\n{first.stderr}"
    assert SECRET not in first.stdout + first.stderr
    assert not [p for p in support.walk_files(tmp_path / "puppet") if SECRET.encode() in p.read_bytes()], \
        "the header secret is in puppet's state, reports or filebucket"
    assert sorted(os.listdir(manifests)) == ["later.yaml", "site.yaml", "static.yaml"]  # no temporary file left
    directory = manifests.stat()
    assert (directory.st_uid, directory.st_gid, stat.S_IMODE(directory.st_mode)) == (0, 0, 0o755)
    copied_hook = hooks / "static" / "after_activate"
    expected: dict[str, dict[str, Any]] = {
        "static.yaml": {
            "apiVersion": "tether/v1", "kind": "ApplicationKind", "metadata": {"name": "static"},
            "spec": {"hooks": {"afterDeploy": AFTER_DEPLOY, "afterActivate": {"path": str(copied_hook)}}},
        },
        "site.yaml": {
            "apiVersion": "tether/v1", "kind": "Application", "metadata": {"name": "site", "labels": {"team": "web"}},
            "spec": {
                "application": "site", "environment": "staging", "path": str(site_path), "kind": "static",
                "deployment": "v1",
                "source": {"url": url.replace("v1", "{deployment}"), "sha256": support.sha256(archive),
                           "headers": {"X-Token": SECRET, "X-From-File": {"fromFile": str(token_file)}}},
                "user": "root", "group": "root", "userMapping": {"app": "root"}, "retention": {"keep": 2},
            },
        },
        "later.yaml": {
            "apiVersion": "tether/v1", "kind": "Application", "metadata": {"name": "later"},
            "spec": {"path": str(later_path)},
        },
    }
    texts = {}
    for name, document in expected.items():
        file = manifests / name
        info = file.stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o644), name
        texts[name] = file.read_bytes()
        assert yaml.safe_load(texts[name].decode("utf-8")) == document, texts[name].decode("utf-8")
    assert copied_hook.read_text() == RESTART
    assert stat.S_IMODE(copied_hook.stat().st_mode) == 0o755

    second = apply(tmp_path, site)

    assert second.returncode == 0, f"the second run should change nothing (exit 0):\n{second.stdout}\n{second.stderr}"
    assert {name: (manifests / name).read_bytes() for name in expected} == texts

    validated = tether("validate", "--json", str(manifests))

    assert validated.returncode == 0, validated.stdout + validated.stderr
    report = json.loads(validated.stdout)
    assert (report["valid"], report["applications"], report["kinds"]) == (True, ["later", "site"], ["static"])

    deployed = tether("reconcile", "--manifests", str(manifests), "--state-dir", str(state))

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert os.readlink(site_path / "current") == str(site_path / "v1")
    assert (site_path / "current" / "index.html").read_text() == "<h1>version 1</h1>\n"
    assert (site_path / "current" / "css" / "site.css").is_file()
    assert (apps / "site-deployed.txt").read_text() == "staging v1 root\n"
    assert (apps / "site-activated.txt").read_text() == "activated v1 as root\n"
    headers = next(h for path, h in http.requests if path == "/site/v1.tar.gz")
    assert (headers["X-Token"], headers["X-From-File"]) == (SECRET, "from-a-file")

    # A path Puppet's types accept but tether refuses: `tether validate` (validate_cmd) stops it
    # before the rename, so the manifest tether reads stays the last good one. The other
    # application is removed in the same run.
    site.write_text(site.read_text().replace(str(site_path), "/etc/site")
                    .replace("tether::application { 'later':", "tether::application { 'later':\n  ensure => absent,"))

    refused = apply(tmp_path, site)

    assert refused.returncode == 6, f"the run should change and fail (exit 6):\n{refused.stdout}\n{refused.stderr}"
    assert "path '/etc/site' is inside the system directory /etc" in refused.stdout + refused.stderr
    assert (manifests / "site.yaml").read_bytes() == texts["site.yaml"]
    assert sorted(os.listdir(manifests)) == ["site.yaml", "static.yaml"]


def test_the_example_compiles_into_a_catalog(tmp_path: Path) -> None:
    # --noop with a tag that no resource has: the whole catalog is compiled (types, parameters,
    # functions), nothing is applied, and the example's package, service and /etc paths are not touched.
    run = puppet(tmp_path, "apply", "--noop", "--tags=tether_compile_only", "--detailed-exitcodes", "--color=false",
                 f"--modulepath={MODULES}", str(MODULE / "examples" / "site.pp"))

    assert run.returncode == 0, run.stdout + run.stderr
    assert "Compiled catalog" in run.stdout


def test_the_module_and_its_example_pass_puppet_parser_validate(tmp_path: Path) -> None:
    files = sorted(str(p) for p in MODULE.rglob("*.pp"))
    assert str(MODULE / "examples" / "site.pp") in files and len(files) > 5

    run = puppet(tmp_path, "parser", "validate", *files)

    assert run.returncode == 0, run.stdout + run.stderr
    metadata = json.loads((MODULE / "metadata.json").read_text())
    assert metadata["name"].endswith("-tether") and metadata["dependencies"] == []


FLEET_SITE = """
class { 'tether':
  manage_package => false,
  manage_service => false,
  manifests_dir  => '@MANIFESTS@',
  hooks_dir      => '@HOOKS@',
  bin            => '@TETHER@',
  node_name      => 'web-1.example.com',
  node_labels    => @LABELS@,
  node_config    => '@NODE@',
}

tether::application { 'site':
  path         => '@SITE_PATH@',
  deployment   => 'v2',
  source       => { url => 'https://artifacts.example.com/site/{deployment}.tar.gz' },
  rollout      => @ROLLOUT@,
  health_check => {
    http            => { url => 'http://127.0.0.1:8080/health', expectStatus => [200, 204] },
    healthySeconds  => 0,
    deadlineSeconds => 30,
  },
}
"""

ROLLOUT = """{
    from      => 'v1',
    startedAt => '2026-12-01T10:00:00Z',
    waves     => [{ selector => { canary => 'true' } }, { percent => 50.5, after => '10m' }, { percent => 100, after => '1h' }],
    gate      => { prometheus => 'http://prometheus:9090', query => 'ALERTS{alertstate="firing"}' },
  }"""


def test_the_class_writes_the_node_file_and_the_define_passes_rollout_and_health_check_to_the_manifest(
        tmp_path: Path) -> None:
    manifests, node_file, site_path = tmp_path / "manifests", tmp_path / "node.yaml", tmp_path / "apps" / "site"
    values = {"MANIFESTS": str(manifests), "HOOKS": str(tmp_path / "hooks"), "TETHER": str(TETHER),
              "NODE": str(node_file), "SITE_PATH": str(site_path), "ROLLOUT": ROLLOUT,
              "LABELS": "{ canary => 'true', 'topology.example.com/zone' => 'eu-1' }"}
    site = tmp_path / "site.pp"
    site.write_text(fill(FLEET_SITE, values))

    applied = apply(tmp_path, site)

    assert applied.returncode == 2, applied.stdout + applied.stderr
    info = node_file.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o644)
    assert not list(tmp_path.glob("node.yaml?*")), "a temporary file was left behind"
    labels = {"canary": "true", "topology.example.com/zone": "eu-1"}
    assert yaml.safe_load(node_file.read_text()) == {
        "apiVersion": "tether/v1", "kind": "Node", "metadata": {"name": "web-1.example.com", "labels": labels}}
    shown = tether("node", "--json", "--node-config", str(node_file), "--manifests", str(manifests))
    assert shown.returncode == 0, shown.stderr
    node = json.loads(shown.stdout)
    assert (node["name"], node["labels"], node["applications"][0]["rollout"]["wave"]) == \
        ("web-1.example.com", labels, 0)  # the canary selector: the first wave
    spec = yaml.safe_load((manifests / "site.yaml").read_text())["spec"]
    assert spec["rollout"] == {
        "from": "v1", "startedAt": "2026-12-01T10:00:00Z",
        "waves": [{"selector": {"canary": "true"}}, {"percent": 50.5, "after": "10m"}, {"percent": 100, "after": "1h"}],
        "gate": {"prometheus": "http://prometheus:9090", "query": 'ALERTS{alertstate="firing"}'}}
    assert spec["healthCheck"] == {"http": {"url": "http://127.0.0.1:8080/health", "expectStatus": [200, 204]},
                                   "healthySeconds": 0, "deadlineSeconds": 30}
    written = node_file.read_bytes(), (manifests / "site.yaml").read_bytes()

    # Puppet's types accept both, tether refuses both: a label name over 317 characters (the node file, checked
    # by `tether node`) and a percent that shrinks (the manifest, checked by `tether validate`).
    long_name = ".".join(["a" * 63] * 5) + "/zone"
    site.write_text(fill(FLEET_SITE, {**values, "ROLLOUT": ROLLOUT.replace("percent => 100", "percent => 20"),
                                      "LABELS": f"{{ '{long_name}' => 'eu-1' }}"}))

    refused = apply(tmp_path, site)

    assert refused.returncode in (4, 6), refused.stdout + refused.stderr
    assert "/metadata/labels" in refused.stdout + refused.stderr and "percent" in refused.stdout + refused.stderr
    assert (node_file.read_bytes(), (manifests / "site.yaml").read_bytes()) == written


WEB_SITE = """
class { 'tether':
  manage_package     => false,
  manage_service     => false,
  manifests_dir      => '@MANIFESTS@',
  hooks_dir          => '@HOOKS@',
  bin                => '@TETHER@',
  web_config_file    => '@WEB@',
  service_dropin_dir => '@DROPIN@',
  web_config         => {
    tls_server_config  => { cert_file => 'server.crt', key_file => 'server.key' },
    http_server_config => { headers => { 'X-Content-Type-Options' => 'nosniff' } },
    basic_auth_users   => { prometheus => '@HASH@' },
  },
}
"""


def test_the_class_writes_the_web_config_tether_accepts_and_the_drop_in_that_passes_it_to_the_daemon(
        tmp_path: Path) -> None:
    import bcrypt

    from controller.daemon import web_config
    from tests import certificates

    certs = certificates.make(tmp_path / "etc")
    hashed = bcrypt.hashpw(b"scrape-secret", bcrypt.gensalt(4)).decode()
    web, dropin = certs.directory / "web-config.yml", tmp_path / "tether.service.d"
    site = tmp_path / "site.pp"
    site.write_text(fill(WEB_SITE, {"MANIFESTS": str(tmp_path / "manifests"), "HOOKS": str(tmp_path / "hooks"),
                                    "TETHER": str(TETHER), "WEB": str(web), "DROPIN": str(dropin), "HASH": hashed}))

    applied = apply(tmp_path, site)

    assert applied.returncode == 2, applied.stdout + applied.stderr
    info = web.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)
    loaded = web_config.load(str(web))  # the paths are relative to the file's directory
    assert loaded.context is not None and dict(loaded.users) == {"prometheus": hashed.encode()}
    assert loaded.headers == (("X-Content-Type-Options", "nosniff"),)
    conf = (dropin / "web-config.conf").read_text()
    assert f"\n[Service]\nEnvironment=TETHER_WEB_CONFIG_FILE={web}\n" in conf
    assert apply(tmp_path, site).returncode == 0  # the same text on the next run: nothing changes


GIT_SITE = """
class { 'tether':
  manage_package => false,
  manage_service => false,
  manifests_dir  => '@MANIFESTS@',
  hooks_dir      => '@HOOKS@',
  bin            => '@TETHER@',
  validate       => @VALIDATE@,
}

tether::application { 'shop':
  path       => '@APPS@/shop',
  deployment => 'v2.1.0',
  source     => {
    git => {
      url          => 'https://git.example.com/shop.git',
      ref          => 'release-{deployment}',
      lfs          => 'ignore',
      subdirectory => 'dist',
      headers      => { 'Authorization' => Sensitive('@SECRET@'), 'X-From-File' => { fromFile => '/etc/tether/secrets/shop' } },
      verify       => { allowedSigners => '/etc/tether/keys/shop.allowed_signers' },
    },
  },
}

tether::application { 'tools':
  path   => '@APPS@/tools',
  source => {
    git => {
      url        => 'ssh://git{AT}git.example.com/tools.git',
      sshKey     => { fromFile => '/etc/tether/secrets/tools-key' },
      knownHosts => '/etc/tether/known_hosts',
      verify     => { gpgKeyring => '/etc/tether/keys/tools.gpg' },
    },
  },
}

tether::application { 'dashboard':
  path   => '@APPS@/dashboard',
  source => { url => 'https://apt.example.com/dashboard_{deployment}_all.deb', format => 'deb', debRoot => 'opt/dashboard' },
}
"""


def test_the_define_writes_a_git_source_and_a_debian_package_source_with_the_schemas_key_names(tmp_path: Path) -> None:
    manifests, apps = tmp_path / "manifests", tmp_path / "apps"
    site = tmp_path / "site.pp"
    site.write_text(fill(GIT_SITE, {"MANIFESTS": str(manifests), "HOOKS": str(tmp_path / "hooks"), "TETHER": str(TETHER),
                                    "APPS": str(apps), "SECRET": SECRET, "VALIDATE": "true"})
                    .replace("{AT}", "@"))  # fill() refuses any '@' left, which an ssh URL has

    applied = apply(tmp_path, site)

    assert applied.returncode == 2, applied.stdout + applied.stderr
    assert SECRET not in applied.stdout + applied.stderr
    assert not [p for p in support.walk_files(tmp_path / "puppet") if SECRET.encode() in p.read_bytes()], \
        "the git header secret is in puppet's state, reports or filebucket"
    sources = {name: yaml.safe_load((manifests / f"{name}.yaml").read_text())["spec"]["source"]
               for name in ("shop", "tools", "dashboard")}
    assert sources == {
        "shop": {"git": {"url": "https://git.example.com/shop.git", "ref": "release-{deployment}", "lfs": "ignore",
                         "subdirectory": "dist",
                         "headers": {"Authorization": SECRET, "X-From-File": {"fromFile": "/etc/tether/secrets/shop"}},
                         "verify": {"allowedSigners": "/etc/tether/keys/shop.allowed_signers"}}},
        "tools": {"git": {"url": "ssh://git@git.example.com/tools.git",
                          "sshKey": {"fromFile": "/etc/tether/secrets/tools-key"},
                          "knownHosts": "/etc/tether/known_hosts", "verify": {"gpgKeyring": "/etc/tether/keys/tools.gpg"}}},
        "dashboard": {"url": "https://apt.example.com/dashboard_{deployment}_all.deb", "format": "deb",
                      "debRoot": "opt/dashboard"},
    }
    validated = tether("validate", str(manifests))
    assert validated.returncode == 0, validated.stdout + validated.stderr


@pytest.mark.parametrize("source", [
    "{ git => { url => 'https://git.example.com/shop.git' }, url => 'https://artifacts.example.com/shop.tar.gz' }",
    "{ sha256 => '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08' }",
])
def test_a_source_with_both_url_and_git_or_neither_fails_the_catalog(tmp_path: Path, source: str) -> None:
    site = tmp_path / "site.pp"
    site.write_text(fill(GIT_SITE.split("tether::application")[0], {
        "MANIFESTS": str(tmp_path / "manifests"), "HOOKS": str(tmp_path / "hooks"), "TETHER": str(TETHER),
        "VALIDATE": "false"}) + f"tether::application {{ 'shop':\n  path => '/srv/shop',\n  source => {source},\n}}\n")

    applied = apply(tmp_path, site)

    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "exactly one of url" in applied.stdout + applied.stderr
    assert not (tmp_path / "manifests" / "shop.yaml").exists()
