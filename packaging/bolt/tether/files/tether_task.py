"""What the tether Bolt/Choria tasks share: parameters, finding the application, running `tether --json`.

Each task executable (tasks/deploy.py, status.py, rollback.py, activate.py, list.py, remove.py, prune.py) imports this file and calls
`main(<task>)`. Python 3 standard library only: it runs with whatever `python3` the target node has.

Parameters come as one JSON object on stdin (Bolt and Choria with "input_method": "stdin"); when
stdin is empty or a terminal, from `PT_<name>` environment variables instead (a Hash as JSON text).
Keys starting with `_` (`_task`, `_installdir`, `_noop`, ...) are the runner's own and are ignored.

The result is one JSON object on stdout. A failure is Bolt's error shape
`{"_error": {"msg", "kind": "tether/...", "details"}}` on stdout, the message on stderr, and a
non-zero exit: 2 for invalid input, 1 otherwise. Header values are secrets: they are passed to
tether only, and replaced by "[redacted]" wherever they would show in the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

STRING = "String[1]"
HEADERS = "Hash[String[1], String[1]]"
KEEP = "Integer[1, 1000]"
REQUIRED, OPTIONAL = True, False

# Every task may name the tether application directly and say which tether to run.
_COMMON = {"name": (STRING, OPTIONAL), "tether_bin": (STRING, OPTIONAL)}

PARAMETERS: dict[str, dict[str, tuple[str, bool]]] = {
    "deploy": {
        "application": (STRING, REQUIRED), "environment": (STRING, REQUIRED), "url": (STRING, REQUIRED),
        "deployment_name": (STRING, OPTIONAL), "headers": (HEADERS, OPTIONAL), "sha256": (STRING, OPTIONAL),
        **_COMMON,
    },
    "status": {"application": (STRING, OPTIONAL), "environment": (STRING, OPTIONAL), **_COMMON},
    "rollback": {"application": (STRING, REQUIRED), "environment": (STRING, REQUIRED), **_COMMON},
    "activate": {"application": (STRING, REQUIRED), "environment": (STRING, REQUIRED),
                 "deployment_name": (STRING, REQUIRED), **_COMMON},
    "list": {"application": (STRING, OPTIONAL), "environment": (STRING, OPTIONAL), **_COMMON},
    "remove": {"application": (STRING, REQUIRED), "environment": (STRING, REQUIRED),
               "deployment_name": (STRING, REQUIRED), **_COMMON},
    "prune": {"application": (STRING, REQUIRED), "environment": (STRING, REQUIRED), "keep": (KEEP, OPTIONAL),
              **_COMMON},
}

BINARY_VARIABLE = "TETHER_BIN"
REDACTED = "[redacted]"
FAILED, INVALID = 1, 2


class TaskError(Exception):
    """A failure to report in Bolt's error shape."""

    def __init__(self, kind: str, msg: str, details: Mapping[str, Any] | None = None, exitcode: int = FAILED):
        super().__init__(msg)
        self.kind, self.msg, self.details, self.exitcode = kind, msg, dict(details or {}), exitcode


# ---------------------------------------------------------------- parameters


def read_parameters(task: str, stdin: IO[str] | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The task's parameters from stdin JSON, or from PT_* variables when stdin holds nothing."""
    text = "" if stdin is None or stdin.isatty() else stdin.read()
    if text.strip():
        try:
            given = json.loads(text)
        except ValueError as exc:  # the decoder's message names a position, never the text itself
            raise TaskError("tether/invalid-parameters", f"the parameters on stdin are not JSON: {exc}",
                            exitcode=INVALID) from None
        if not isinstance(given, dict):
            raise TaskError("tether/invalid-parameters", "the parameters on stdin must be one JSON object",
                            exitcode=INVALID)
        return {k: v for k, v in given.items() if not k.startswith("_") and v is not None}
    given = {}
    for variable, value in environ.items():
        if not variable.startswith("PT_") or variable.startswith("PT__"):
            continue
        key = variable[3:]
        kind = PARAMETERS[task].get(key, ("",))[0]
        if kind == KEEP:
            given[key] = int(value) if value.strip().isdigit() else value  # else "must be an integer" below
        elif kind == HEADERS:
            try:
                given[key] = json.loads(value)
            except ValueError:
                given[key] = value  # reported as "must be a JSON object" below, without its text
        else:
            given[key] = value
    return given


def _problem(kind: str, value: Any) -> str | None:
    """What is wrong with `value` for a parameter of `kind`, in words that never quote a header value."""
    if kind == KEEP:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            return "must be an integer from 1 to 1000"
        return None
    if kind == STRING:
        if not isinstance(value, str) or not value:
            return "must be a non-empty string"
        return "must not contain a NUL character" if "\0" in value else None
    if not isinstance(value, dict):
        return "must be a JSON object of header names to values"
    for header, text in value.items():
        if not header or any(c in header for c in ":\r\n\0") or header != header.strip():
            return f"has an invalid header name {header!r}: non-empty, no colon, no surrounding spaces"
        if not isinstance(text, str) or not text.strip() or any(c in text for c in "\r\n\0"):
            return f"has an invalid value for {header!r}: it must be a non-empty string on one line"
    return None


def validate(task: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` checked against the task's parameters; TaskError naming every problem at once."""
    spec = PARAMETERS[task]
    unknown = sorted(k for k in given if k not in spec)
    missing = sorted(k for k, (_, required) in spec.items() if required and k not in given)
    invalid = {k: p for k, v in given.items() if k in spec and (p := _problem(spec[k][0], v)) is not None}
    if unknown or missing or invalid:
        words = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"unknown {', '.join(unknown)}"] if unknown else []) + \
                [f"{k} {p}" for k, p in sorted(invalid.items())]
        raise TaskError("tether/invalid-parameters", f"invalid parameters for tether::{task}: " + "; ".join(words),
                        {"missing": missing, "unknown": unknown, "invalid": invalid}, INVALID)
    return dict(given)


# ---------------------------------------------------------------- running tether


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def tether(binary: str, args: list[str], runner: Runner = subprocess.run, stdin: str = "") -> tuple[int, Any, str]:
    """Run `binary args...` with `stdin`; (exit code, its stdout as JSON or None, its stderr)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PT_")}  # no parameters, no secrets
    try:
        done = runner([binary, *args], input=stdin, capture_output=True, text=True, env=environment, check=False)
    except OSError as exc:
        raise TaskError("tether/not-installed",
                        f"cannot run tether as {binary!r}: {exc.strerror or exc}; install tether, or give its path "
                        f"with the tether_bin parameter or the {BINARY_VARIABLE} environment variable",
                        {"tether_bin": binary}) from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    return done.returncode, answer, done.stderr


def _failure(command: str, code: int, answer: Any, stderr: str, details: dict[str, Any]) -> TaskError:
    """The error for a tether run that did not succeed."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        kind = "tether/invalid-input" if code == INVALID else f"tether/{command}-failed"
        return TaskError(kind, f"tether {command}: {answer['error']}", {**details, "exitcode": code},
                         INVALID if code == INVALID else FAILED)
    lines = [line for line in stderr.splitlines() if line.strip()]
    said = lines[-1] if lines else "nothing on stderr"
    return TaskError("tether/command-failed", f"tether {command} exited with {code} without a JSON answer: {said}",
                     {**details, "exitcode": code, "stderr": "\n".join(lines[-20:])})


def status_documents(binary: str) -> list[dict[str, Any]]:
    code, answer, stderr = tether(binary, ["status", "--json"])
    if code != 0 or not isinstance(answer, list):
        raise _failure("status", code, answer, stderr, {})
    return [d for d in answer if isinstance(d, dict)]


def _identity(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: document.get(k) for k in ("name", "application", "environment")}


def matching(documents: list[dict[str, Any]], params: Mapping[str, Any]) -> list[dict[str, Any]]:
    wanted = {k: params[k] for k in ("name", "application", "environment") if k in params}
    return [d for d in documents if all(d.get(k) == v for k, v in wanted.items())]


def unknown(documents: list[dict[str, Any]], wanted: Mapping[str, Any]) -> TaskError:
    """The error for a selection that matches no application, with what tether does know."""
    known = [_identity(d) for d in documents]
    return TaskError("tether/unknown-application",
                     "no tether application on this node is "
                     + " and ".join(f"{k} {v!r}" for k, v in wanted.items() if v is not None)
                     + " (tether knows: "
                     + (", ".join(f"{k['name']} = {k['application']}/{k['environment']}" for k in known) or "none")
                     + "); an application is known once tether has reconciled its manifest",
                     {**wanted, "known": known})


def resolve(documents: list[dict[str, Any]], params: Mapping[str, Any]) -> str:
    """The tether application (metadata.name) that `application` and `environment` (and `name`) select.

    tether knows an application's application/environment once it has reconciled its manifest (its
    status document). `name` names it directly: it is checked against that status when there is one,
    and used as it is when there is none yet (tether itself refuses a name without a valid manifest)."""
    found = matching(documents, params)
    if len(found) == 1:
        return str(found[0]["name"])
    wanted = {k: params.get(k) for k in ("application", "environment")}
    if not found and "name" in params:
        named = [d for d in documents if d.get("name") == params["name"]]
        if not named:
            return str(params["name"])
        raise TaskError("tether/application-mismatch",
                        f"the tether application {params['name']!r} is application "
                        f"{named[0].get('application')!r} in environment {named[0].get('environment')!r}, "
                        f"not {wanted['application']!r} in {wanted['environment']!r}",
                        {**wanted, "name": params["name"], "found": _identity(named[0])})
    if not found:
        raise unknown(documents, wanted)
    names = sorted(str(d["name"]) for d in found)
    raise TaskError("tether/ambiguous-application",
                    f"{len(names)} tether applications are application {wanted['application']!r} in environment "
                    f"{wanted['environment']!r}: {', '.join(names)}; give the one meant as the name parameter",
                    {**wanted, "names": names})


def _outcome(command: str, name: str, code: int, answer: Any, stderr: str) -> dict[str, Any]:
    """The result of `tether deploy|rollback NAME --json`, or the TaskError saying why it failed."""
    if isinstance(answer, dict) and "ok" in answer and "status" in answer:
        status = answer.get("status") or {}
        result = {"name": answer.get("name", name), "application": status.get("application"),
                  "environment": status.get("environment"), "ok": answer["ok"], "message": answer.get("message"),
                  "current": status.get("current"), "status": answer.get("status")}
        if code == 0 and answer["ok"] is True:
            return result
        raise TaskError(f"tether/{command}-failed", f"{name}: {answer.get('message')}",
                        {**result, "exitcode": code})
    raise _failure(command, code, answer, stderr, {"name": name})


# ---------------------------------------------------------------- the tasks


def deployment_name(now: float) -> str:
    """A new deployment's name when none is given: the UTC time, as the seed module named them."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def run_deploy(params: dict[str, Any], binary: str, now: float) -> dict[str, Any]:
    name = resolve(status_documents(binary), params)
    args = ["deploy", "--json", "--wait", f"--url={params['url']}",
            f"--deployment={params.get('deployment_name') or deployment_name(now)}"]
    if "sha256" in params:
        args.append(f"--sha256={params['sha256']}")
    # Headers go through stdin: a command line is visible to every user in ps.
    headers = "".join(f"{key}: {value}\n" for key, value in params.get("headers", {}).items())
    return _outcome("deploy", name, *tether(binary, [*args, "--headers-from-stdin", "--", name], stdin=headers))


def run_rollback(params: dict[str, Any], binary: str, now: float) -> dict[str, Any]:
    name = resolve(status_documents(binary), params)
    return _outcome("rollback", name, *tether(binary, ["rollback", "--json", "--", name]))


def run_status(params: dict[str, Any], binary: str, now: float) -> dict[str, Any]:
    documents = status_documents(binary)
    found = matching(documents, params)
    if not found and any(k in params for k in ("name", "application", "environment")):
        raise unknown(documents, {k: params.get(k) for k in ("name", "application", "environment")})
    return {"applications": found}


def run_activate(params: dict[str, Any], binary: str, now: float) -> dict[str, Any]:
    name = resolve(status_documents(binary), params)
    return _outcome("activate", name, *tether(binary, ["activate", "--json", "--", name, params["deployment_name"]]))


def run_remove(params: dict[str, Any], binary: str, now: float) -> dict[str, Any]:
    name = resolve(status_documents(binary), params)
    return _outcome("remove", name, *tether(binary, ["remove", "--json", "--", name, params["deployment_name"]]))


def run_prune(params: dict[str, Any], binary: str, now: float) -> dict[str, Any]:
    name = resolve(status_documents(binary), params)
    keep = [f"--keep={params['keep']}"] if "keep" in params else []
    return _outcome("prune", name, *tether(binary, ["prune", "--json", *keep, "--", name]))


def run_list(params: dict[str, Any], binary: str, now: float) -> dict[str, Any]:
    """Each selected application with its deployments (`tether list NAME --json`), as the seed's list task."""
    documents = status_documents(binary)
    found = matching(documents, params)
    if not found and any(k in params for k in ("name", "application", "environment")):
        raise unknown(documents, {k: params.get(k) for k in ("name", "application", "environment")})
    applications = []
    for document in found:
        name = str(document["name"])
        code, answer, stderr = tether(binary, ["list", "--json", "--", name])
        if code != 0 or not isinstance(answer, list):
            raise _failure("list", code, answer, stderr, {"name": name})
        applications.append({**_identity(document), "current": document.get("current"), "deployments": answer})
    return {"applications": applications}


TASKS: dict[str, Callable[[dict[str, Any], str, float], dict[str, Any]]] = {
    "deploy": run_deploy, "status": run_status, "rollback": run_rollback, "activate": run_activate,
    "list": run_list, "remove": run_remove, "prune": run_prune,
}


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret replaced, in strings and keys, at any depth."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    return value


def _secrets(params: Mapping[str, Any]) -> list[str]:
    headers = params.get("headers")
    values = [v for v in headers.values() if isinstance(v, str)] if isinstance(headers, dict) else []
    # tether strips a header value's spaces: redact both spellings, longest first so none leaves a part behind.
    return sorted({s for v in values for s in (v, v.strip()) if s}, key=len, reverse=True)


def main(task: str, stdin: IO[str] | None = None, environ: Mapping[str, str] | None = None,
         stdout: IO[str] | None = None, stderr: IO[str] | None = None, clock: Callable[[], float] = time.time) -> int:
    """Run one task; print its result or its error; return the exit code."""
    environ = os.environ if environ is None else environ
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    secrets: list[str] = []
    try:
        given = read_parameters(task, sys.stdin if stdin is None else stdin, environ)
        secrets = _secrets(given)
        params = validate(task, given)
        binary = params.get("tether_bin") or environ.get(BINARY_VARIABLE) or "tether"
        result = TASKS[task](params, binary, clock())
    except TaskError as exc:
        error = redact({"_error": {"msg": exc.msg, "kind": exc.kind, "details": exc.details}}, secrets)
        print(json.dumps(error, indent=2), file=stdout)
        print(f"tether::{task}: {error['_error']['msg']}", file=stderr)
        return exc.exitcode
    print(json.dumps(redact(result, secrets), indent=2), file=stdout)
    return 0
