"""Checking the signature of what a git ref names, before any of its files is written.

The signature checked is the tag's own when the ref names an annotated tag,
the commit's otherwise. A signature covers an object, not the ref naming it,
so an annotated tag's signed `tag` line must be the ref asked for: a server
cannot serve an older release's signed tag under a newer name. (A light tag or
a branch names no object that says its name: any signed commit can be served
under it; sign tags, and pin by annotated tag, to rule that out.) Keys come
from the manifest only: an ssh allowed_signers file
(`gpg.ssh.allowedSignersFile`, signatures made with `gpg.format=ssh`), or an
OpenPGP keyring imported into a private temporary GNUPGHOME (never the user's
or root's keyring). Unsigned, signed by a key not in the file, or a bad
signature: a permanent error naming the ref and the key file.
"""

from __future__ import annotations

import logging
import os
import subprocess

from controller import errors
from controller.artifacts import git_mirror, git_runner
from controller.manifests import model

log = logging.getLogger(__name__)
GPG_SECONDS = 60.0


def _refused(resolved: git_mirror.Resolved, keys: str, why: str) -> errors.PermanentError:
    what = f"the annotated tag {resolved.ref}" if resolved.tag_object else f"commit {resolved.commit} ({resolved.ref})"
    return errors.PermanentError(f"{what} {why}; source.git.verify trusts only the keys in {keys}, so nothing was "
                                 "deployed. Sign it with a key listed there, or fix source.git.verify")


def _body(git: git_runner.Git, resolved: git_mirror.Resolved) -> bytes:
    _, body, _ = git.run("cat-file", "-p", resolved.tag_object or resolved.commit, what="git cat-file")
    return body


def _signed(resolved: git_mirror.Resolved, body: bytes) -> bool:
    """Whether the object to check carries a signature at all."""
    if resolved.tag_object:
        return b"-----BEGIN " in body
    header = body.split(b"\n\n", 1)[0]
    return b"\ngpgsig " in b"\n" + header or b"\ngpgsig-sha256 " in b"\n" + header


def tag_name(body: bytes) -> str | None:
    """The name a tag object gives itself (its `tag` header line), which its signature covers."""
    for line in body.split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(b"tag "):
            return line[4:].decode("utf-8", "replace")
    return None


def _gnupg_home(git: git_runner.Git, keyring: str) -> str:
    """A private GNUPGHOME holding only the keys of `keyring`."""
    if not os.path.isfile(keyring):
        raise errors.PermanentError(f"source.git.verify.gpgKeyring {keyring} is not a readable file; create it")
    home = os.path.join(git.private_dir, "gnupg")
    os.mkdir(home, 0o700)
    try:
        done = subprocess.run(["gpg", "--batch", "--no-tty", "--quiet", "--homedir", home, "--import", keyring],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=GPG_SECONDS, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GNUPGHOME": home,
                                   "HOME": home, "LC_ALL": "C"})
    except FileNotFoundError:
        raise errors.PermanentError("source.git.verify.gpgKeyring needs gpg, which is not installed; "
                                    "install the gpg package") from None
    except subprocess.TimeoutExpired:
        raise errors.TemporaryError(f"importing {keyring} into a private keyring took too long") from None
    if done.returncode != 0:
        text = git.clean.text(" ".join(done.stderr.decode("utf-8", "replace").split()))
        raise errors.PermanentError(f"source.git.verify.gpgKeyring {keyring} could not be imported: {text}")
    return home


def verify(git: git_runner.Git, source: model.GitSource, resolved: git_mirror.Resolved) -> None:
    """Check the signature `source.git.verify` asks for; raise PermanentError when it does not hold."""
    keys = source.allowed_signers or source.gpg_keyring
    if keys is None:
        return
    body = _body(git, resolved)
    if not _signed(resolved, body):
        raise _refused(resolved, keys, "is not signed")
    # A signature covers the tag object, not the ref that names it: a server can serve an older release's signed
    # tag under the name of a newer one. The name inside the signed object must be the ref asked for.
    if resolved.tag_object and (named := tag_name(body)) != resolved.ref:
        raise _refused(resolved, keys, f"is the signed tag object of {named!r}, served under another name (an "
                       "older release swapped in?)")
    command = ["verify-tag", resolved.tag_object] if resolved.tag_object else ["verify-commit", resolved.commit]
    env: dict[str, str] = {}
    if source.allowed_signers is not None:
        if not os.path.isfile(source.allowed_signers):
            raise errors.PermanentError(f"source.git.verify.allowedSigners {source.allowed_signers} is not a "
                                        "readable file; create it")
        config = ["-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={source.allowed_signers}",
                  "-c", "gpg.ssh.program=ssh-keygen", "-c", "gpg.program=/bin/false"]
    else:
        assert source.gpg_keyring is not None
        env["GNUPGHOME"] = _gnupg_home(git, source.gpg_keyring)
        config = ["-c", "gpg.program=gpg", "-c", "gpg.ssh.program=/bin/false"]
    code, _, stderr = git.run(*config, *command, check=False, extra_env=env, what="git " + command[0])
    if code != 0:
        reason = " ".join(stderr.split())[:300] or "a signature of another kind than the one configured"
        log.warning("The signature of %s (%s) did not verify with %s: %s", resolved.ref, resolved.commit, keys,
                    reason)
        raise _refused(resolved, keys, f"has no good signature by a trusted key ({reason})")
    log.info("The signature of %s (%s) verified with %s.", resolved.ref, resolved.commit, keys)
