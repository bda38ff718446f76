"""Dockerfile, .dockerignore and compose.yaml: the service deployable (issue 14, "Deployable").

Where a container runtime answers (``docker info``), `test_the_image_builds_and_serves`
builds the image, runs it and waits for /healthz and for Docker's own health status. Where
none does, as on the development machines, that test runs every parser check below instead
and passes, with a warning saying that no image was built: the suite never needs one.

The parser checks, each also a unit test of its own:

- the Dockerfile through BuildKit's own parser (the ``dockerfile`` package): two stages on
  the same slim Python, wheels of every service extra built in the first and installed from
  it in the second (no compiler there), a fixed non-root uid owning the data directory, the
  keys file in it, a HEALTHCHECK on /healthz, ``agent-core serve`` as the entry point with
  options that ``serve`` itself parses, and never ``--insecure-no-auth``;
- .dockerignore: what the Dockerfile copies is in the build context, .git, .venv, the
  caches and the tests are not;
- compose.yaml with PyYAML, validated against the compose-spec JSON schema that
  check-jsonschema ships, then: the app, PostgreSQL and Redis with their health checks,
  the app started after both are healthy, every ``AGENT_CORE_*`` variable a real one,
  published on loopback only, and the generated PostgreSQL password and store URL (the
  one-shot service's program, run here on a temporary directory) agreeing with each other.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from unittest import mock
from urllib.parse import urlsplit

import dockerfile
import jsonschema_rs
import pytest
import typer.main
import yaml

from agent_core.cli import app
from agent_core.server import Settings

from ._poll import eventually_sync

ENV_PREFIX = "AGENT_CORE_"
ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"

#: The base of every stage: wheels built in one are installed in the other.
PYTHON_IMAGE = "python:3.11-slim"
#: The extras the image leaves out, with the reason; every other extra is installed, so a
#: new one (``encryption``, say) cannot be forgotten.
NOT_IN_IMAGE = {
    "lambda": "the AWS Lambda adapter, not the HTTP service",
    "plot": "bench --plot's PNG plots",
    "openai-agents": "the openai-agents adapter, imported by the user's own agents",
    "langchain": "the LangChain adapter, imported by the user's own chains",
    "pydantic-ai": "the pydantic-ai adapter, imported by the user's own agents",
    "all": "every extra, the two above included",
    "dev": "tests and tools",
}
#: Where a compiler would come from: none of it in the final stage.
BUILD_TOOLS = re.compile(r"\b(apt-get|apt|gcc|g\+\+|build-essential|clang|rustc|cargo)\b")
#: The postgres image's own user (Debian images): the password file is its alone.
POSTGRES_UID = 999


# -- the Dockerfile ---------------------------------------------------------------------


class Stage(NamedTuple):
    base: str
    name: str | None
    commands: tuple[Any, ...]  # dockerfile.Command

    def all(self, instruction: str) -> list[Any]:
        return [command for command in self.commands if command.cmd == instruction]

    def one(self, instruction: str) -> Any:
        found = self.all(instruction)
        assert found, f"the stage FROM {self.base} has no {instruction}"
        return found[-1]  # the one in force


@cache
def stages() -> tuple[Stage, ...]:
    """The Dockerfile's stages, as BuildKit's parser reads it (a syntax error fails here)."""
    commands = dockerfile.parse_file(str(DOCKERFILE))
    assert commands, "the Dockerfile is empty"
    assert commands[0].cmd == "FROM", "the Dockerfile must start with FROM"
    starts = [i for i, command in enumerate(commands) if command.cmd == "FROM"]
    found = []
    for start, end in zip(starts, [*starts[1:], len(commands)], strict=True):
        value = commands[start].value
        name = value[2] if len(value) == 3 and value[1].upper() == "AS" else None
        found.append(Stage(value[0], name, tuple(commands[start + 1 : end])))
    return tuple(found)


def final() -> Stage:
    return stages()[-1]


def run_words(command: Any) -> list[str]:
    """A shell-form RUN's words, its ``&&`` chains and line continuations included."""
    return shlex.split(" ".join(command.value))


def pip_calls(stage: Stage, verb: str) -> list[list[str]]:
    """The ``pip <verb> ...`` calls of the stage's RUNs, as word lists from ``pip`` on."""
    calls = []
    for command in stage.all("RUN"):
        words = run_words(command)
        for i, word in enumerate(words[:-1]):
            if word == "pip" and words[i + 1] == verb:
                rest = words[i:]
                end = rest.index("&&") if "&&" in rest else len(rest)
                calls.append(rest[:end])
    return calls


def extras_of(requirement: str) -> set[str]:
    """``".[a,b]"`` or ``"agent-core[a,b]"`` -> ``{"a", "b"}``."""
    match = re.fullmatch(r"(?:\.|agent-core)\[([a-z0-9_,-]+)\]", requirement)
    assert match, f"expected .[extras] or agent-core[extras], got {requirement!r}"
    return set(match[1].split(","))


def service_extras() -> set[str]:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert set(NOT_IN_IMAGE) <= set(extras), "NOT_IN_IMAGE names an extra that is gone"
    return set(extras) - set(NOT_IN_IMAGE)


def image_uid() -> int:
    user = final().one("USER").value[0]
    uid = user.split(":")[0]
    assert uid.isdigit(), f"USER {user}: give a numeric uid (a fixed one, for volumes)"
    return int(uid)


def envs(stage: Stage) -> dict[str, str]:
    """The stage's ENV settings (``ENV A=1 B=2``: BuildKit gives name, value, ``=`` triples)."""
    found = {}
    for command in stage.all("ENV"):
        values = command.value
        for i in range(0, len(values), 3):
            found[values[i]] = values[i + 1]
    return found


def check_two_stages_on_slim_python() -> None:
    """Multi-stage: a named build stage, then the final one on python:3.11-slim, and the
    same Python in both (the wheels' ABI)."""
    assert len(stages()) >= 2, "the Dockerfile must build wheels in a stage of their own"
    assert stages()[0].name, "name the build stage (FROM ... AS build)"
    for stage in stages():
        assert stage.base == PYTHON_IMAGE, f"FROM {stage.base}: every stage uses {PYTHON_IMAGE}"
    assert final().name is None or final().name != stages()[0].name


def check_wheels_of_every_service_extra() -> None:
    """The first stage builds wheels of the project with every extra the service needs; the
    final one installs exactly those from them, with no index: nothing built there."""
    build = stages()[0]
    (wheel,) = pip_calls(build, "wheel")
    assert "--wheel-dir" in wheel or "-w" in wheel, wheel
    directory = wheel[wheel.index("--wheel-dir" if "--wheel-dir" in wheel else "-w") + 1]
    wanted = service_extras()
    assert extras_of(wheel[-1]) == wanted, (
        f"pip wheel {wheel[-1]}: the service's extras are {sorted(wanted)}; put a new extra in "
        "the Dockerfile's pip wheel and pip install, or in NOT_IN_IMAGE here with the reason"
    )

    (install,) = pip_calls(final(), "install")
    assert "--no-index" in install, install
    assert f"--find-links={directory}" in install, install
    assert extras_of(install[-1]) == wanted, install
    (run,) = [command for command in final().all("RUN") if "pip install" in command.original]
    mounts = [flag for flag in run.flags if flag.startswith("--mount=")]
    copies = [c for c in final().all("COPY") if f"--from={build.name}" in c.flags]
    assert any(
        f"from={build.name}" in mount and f"target={directory}" in mount for mount in mounts
    ) or any(copy.value[-1].rstrip("/") == directory for copy in copies), (
        f"the final stage must take {directory} from the {build.name} stage"
    )


def check_no_compiler_in_the_final_stage() -> None:
    """No package manager or compiler runs in the final stage."""
    for command in final().all("RUN"):
        assert not BUILD_TOOLS.search(" ".join(command.value)), command.original


def check_a_fixed_non_root_user() -> None:
    """USER is a fixed numeric uid, not 0, created with that uid, after the installs."""
    uid = image_uid()
    assert uid != 0, "the image must not run as root"
    created = [run_words(c) for c in final().all("RUN") if "useradd" in c.original]
    assert created, "create the user (useradd --uid ...)"
    words = created[0]
    assert words[words.index("--uid") + 1] == str(uid)
    last_run = max(c.start_line for c in final().all("RUN"))
    assert final().one("USER").start_line > last_run, "USER after the last RUN"


def check_a_writable_data_directory_with_the_keys_file() -> None:
    """WORKDIR is a directory the user owns, and AGENT_CORE_KEYS_FILE is in it."""
    workdir = final().one("WORKDIR").value[0]
    uid = image_uid()
    owned = [run_words(c) for c in final().all("RUN") if "chown" in c.original]
    assert any(
        words[i + 1].split(":")[0] == str(uid) and words[i + 2] == workdir
        for words in owned
        for i, word in enumerate(words[:-2])
        if word == "chown"
    ), f"chown {workdir} to {uid}: SQLite and the keys file are written there"
    keys_file = envs(final()).get("AGENT_CORE_KEYS_FILE")
    assert keys_file, "set AGENT_CORE_KEYS_FILE: serve refuses 0.0.0.0 without auth"
    assert PurePosixPath(keys_file).parent == PurePosixPath(workdir)
    for name in envs(final()):
        if name.startswith(ENV_PREFIX):
            assert name in known_variables(), f"ENV {name} is not a setting agent-core reads"


def check_healthcheck_on_healthz() -> None:
    """HEALTHCHECK runs Python (no curl in slim) against /healthz on the served port."""
    check = final().one("HEALTHCHECK")
    assert check.json, "HEALTHCHECK CMD in the exec form"
    assert check.value[:3] == ("CMD", "python", "-c"), check.value
    code = check.value[3]
    compile(code, "HEALTHCHECK", "exec")
    assert "urllib.request" in code
    assert f"127.0.0.1:{serve_params()['port']}/healthz" in code, code
    assert any(flag.startswith("--timeout=") for flag in check.flags)


def check_agent_core_serve_is_the_entry_point() -> None:
    """ENTRYPOINT agent-core, CMD serve on 0.0.0.0 with options serve itself accepts, EXPOSE
    that port, and nowhere --insecure-no-auth."""
    assert final().one("ENTRYPOINT").value == ("agent-core",)
    assert final().one("ENTRYPOINT").json
    params = serve_params()
    assert params["host"] == "0.0.0.0"
    assert final().one("EXPOSE").value == (str(params["port"]),)
    assert not params["insecure_no_auth"]
    for path in (DOCKERFILE, COMPOSE):
        assert "insecure-no-auth" not in path.read_text(encoding="utf-8").lower(), path
        assert "INSECURE_NO_AUTH" not in path.read_text(encoding="utf-8"), path


def serve_params() -> dict[str, Any]:
    """The image's CMD as ``agent-core serve`` parses it (click's own parser)."""
    cmd = final().one("CMD")
    assert cmd.json, "CMD in the exec form"
    assert cmd.value[0] == "serve", cmd.value
    group: Any = typer.main.get_command(app)
    with mock.patch.dict(os.environ, {}, clear=True):
        context = group.commands["serve"].make_context("serve", list(cmd.value[1:]))
    return dict(context.params)


# -- .dockerignore --------------------------------------------------------------------


@cache
def ignore_patterns() -> tuple[tuple[bool, re.Pattern[str], int], ...]:
    """(exclusion, regex, number of path parts) per .dockerignore line, as Docker reads it."""
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        text = os.path.normpath(line.removeprefix("!").strip().strip("/"))
        regex = ""
        i = 0
        while i < len(text):
            if text.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif text.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif text[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif text[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif text[i] == "[":
                end = text.index("]", i)
                regex, i = regex + text[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(text[i]), i + 1
        patterns.append((not include, re.compile(regex), len(text.split("/"))))
    return tuple(patterns)


def _matched(path: str) -> bool:
    """Docker's rule for one path: the last pattern that matches it, or its first parts."""
    parts = path.split("/")
    excluded = False
    for exclusion, regex, length in ignore_patterns():
        if regex.fullmatch(path) or (
            length < len(parts) and regex.fullmatch("/".join(parts[:length]))
        ):
            excluded = exclusion
    return excluded


def ignored(path: str) -> bool:
    """Whether ``path`` (relative, with /) stays out of the build context: it or a
    directory above it is excluded (Docker does not walk into an excluded directory)."""
    parts = path.split("/")
    return any(_matched("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def check_what_the_dockerfile_copies_is_in_the_context() -> None:
    """Every COPY source (but --from) exists and no file under it is ignored."""
    copies = [c for stage in stages() for c in stage.all("COPY")]
    assert copies
    for copy in copies:
        if any(flag.startswith("--from=") for flag in copy.flags):
            continue
        for source in copy.value[:-1]:
            path = ROOT / source
            assert path.exists(), f"{copy.original}: {source} does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            needed = [
                p.relative_to(ROOT).as_posix()
                for p in files
                if "__pycache__" not in p.parts and not p.parent.name.endswith(".egg-info")
            ]
            assert needed, source
            kept_out = [name for name in needed if ignored(name)]
            assert not kept_out, f".dockerignore keeps out what COPY needs: {kept_out[:5]}"


def check_dockerignore_keeps_the_rest_out() -> None:
    """.git, .venv, the caches, the tests and their data, SQLite files: not in the context."""
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        "tests/conftest.py",
        "tests/data/x.bin",
        "benchmarks/x.py",
        "agent-core.db",
        "keys.json",
        "src/agent_core/__pycache__/cli.cpython-311.pyc",
        "src/agent_core.egg-info/PKG-INFO",
    ):
        assert ignored(path), f".dockerignore should keep {path} out of the build context"


# -- compose.yaml ---------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"compose.yaml needs a service {name!r}"
    found: dict[str, Any] = services[name]
    return found


def environment(name: str) -> dict[str, str]:
    raw = service(name).get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def mounts(name: str) -> dict[str, str]:
    """The service's volume mounts (short form), target -> source."""
    found = {}
    for volume in service(name).get("volumes", []):
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def interpolated(text: str) -> str:
    """``${NAME:-default}`` as compose gives it with NAME unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


@cache
def known_variables() -> frozenset[str]:
    """What agent-core reads: each `Settings` field's variable and its ``_FILE`` twin, and
    the variable of every command line option (serve's, keys')."""
    names = set()
    for field in dataclasses.fields(Settings):
        names |= {ENV_PREFIX + field.name.upper(), ENV_PREFIX + field.name.upper() + "_FILE"}

    def walk(command: Any) -> Iterator[str]:
        for param in command.params:
            envvar = param.envvar
            yield from [envvar] if isinstance(envvar, str) else envvar or ()
        for sub in getattr(command, "commands", {}).values():
            yield from walk(sub)

    names |= set(walk(typer.main.get_command(app)))
    return frozenset(names)


def check_compose_follows_the_compose_spec() -> None:
    """compose.yaml is valid against the compose-spec schema (check-jsonschema's copy)."""
    schema = importlib.resources.files("check_jsonschema.builtin_schemas").joinpath(
        "vendor/compose-spec.json"
    )
    validator = jsonschema_rs.validator_for(json.loads(schema.read_text(encoding="utf-8")))
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, errors


def check_app_postgres_and_redis_with_health_checks() -> None:
    """The app built from the Dockerfile; PostgreSQL 15/16 on a named volume and Redis 7,
    each with its own health check."""
    build = service("app")["build"]
    assert (build if isinstance(build, str) else build.get("context")) == ".", build
    assert re.fullmatch(r"postgres:1[56](?:[.-].*)?", service("postgres")["image"])
    assert re.fullmatch(r"redis:7(?:[.-].*)?", service("redis")["image"])
    postgres_check = service("postgres")["healthcheck"]["test"]
    assert "pg_isready" in postgres_check
    # TCP, as the app connects: during initdb the image's temporary server has the socket only.
    assert "--host=127.0.0.1" in postgres_check, postgres_check
    assert service("redis")["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    data = mounts("postgres").get("/var/lib/postgresql/data")
    assert data in compose().get("volumes", {}), "PostgreSQL's data on a named volume"
    assert mounts("app").get("/data") in compose()["volumes"], "the app's /data on a volume"


def check_the_app_starts_after_healthy_postgres_and_redis() -> None:
    """depends_on: postgres and redis healthy; any other service is one-shot and done."""
    depends = service("app")["depends_on"]
    assert depends["postgres"] == {"condition": "service_healthy"}
    assert depends["redis"] == {"condition": "service_healthy"}
    for name, condition in depends.items():
        if name not in ("postgres", "redis"):
            assert condition == {"condition": "service_completed_successfully"}, name


def check_every_variable_is_one_agent_core_reads() -> None:
    """Each AGENT_CORE_* variable set on a service is a setting or option agent-core has;
    the app reaches PostgreSQL and Redis by service name, with a keys file on /data."""
    for name in compose()["services"]:
        for variable in environment(name):
            if variable.startswith(ENV_PREFIX):
                assert variable in known_variables(), f"{name}: {variable} is read by nothing"
    app_env = environment("app")
    assert app_env["AGENT_CORE_REDIS_URL"] == "redis://redis:6379/0"
    assert {"AGENT_CORE_STORE_URL", "AGENT_CORE_STORE_URL_FILE"} & set(app_env)
    assert PurePosixPath(app_env["AGENT_CORE_KEYS_FILE"]).parent == PurePosixPath("/data")


def check_only_the_app_is_published_on_loopback() -> None:
    """The app's port is published on 127.0.0.1 unless told otherwise; the rest not at all."""
    ports = service("app")["ports"]
    assert ports
    for port in ports:
        host, _published, target = interpolated(str(port)).rsplit(":", 2)
        assert host == "127.0.0.1", port
        assert target == str(serve_params()["port"])
    assert "ports" not in service("postgres")
    assert "ports" not in service("redis")


def secret_file(name: str, variable: str) -> tuple[str, str]:
    """(volume, file name) of the file a service's ``*_FILE`` variable names."""
    path = PurePosixPath(environment(name)[variable])
    volume = mounts(name).get(str(path.parent))
    assert volume is not None, f"{name}: nothing is mounted on {path.parent}"
    assert volume in compose()["volumes"], f"{name}: {path} is not on a named volume"
    return volume, path.name


def check_the_generated_password_and_store_url_agree() -> None:
    """The one-shot service's program, run on a temporary directory: the store URL the app
    reads names the postgres service, its user, database and password, each file is its
    reader's alone, and a second run keeps them."""
    volume, url_name = secret_file("app", "AGENT_CORE_STORE_URL_FILE")
    assert secret_file("postgres", "POSTGRES_PASSWORD_FILE")[0] == volume
    password_name = secret_file("postgres", "POSTGRES_PASSWORD_FILE")[1]
    (init,) = [
        name
        for name in compose()["services"]
        if volume in mounts(name).values() and name not in ("app", "postgres")
    ]
    assert service("app")["depends_on"][init] == {"condition": "service_completed_successfully"}
    assert service("postgres")["depends_on"][init]["condition"] == (
        "service_completed_successfully"
    )
    entrypoint, command = service(init)["entrypoint"], service(init)["command"]
    assert entrypoint == ["python", "-c"], entrypoint
    code, target = command
    assert mounts(init)[target] == volume
    postgres_env = environment("postgres")

    owners: dict[str, int] = {}
    umask = os.umask(0o022)
    os.umask(umask)
    with tempfile.TemporaryDirectory() as folder:

        def chown(path: str | os.PathLike[str], uid: int, gid: int) -> None:
            owners[Path(path).name.removesuffix(".new")] = uid

        def program() -> None:
            with (
                mock.patch.object(os, "chown", chown),
                mock.patch.object(sys, "argv", ["-c", folder]),
            ):
                exec(compile(code, f"compose.yaml {init}", "exec"), {"__name__": "__main__"})
            os.umask(umask)

        program()
        directory = Path(folder)
        password = (directory / password_name).read_text(encoding="utf-8")
        url = Settings.from_env({"AGENT_CORE_STORE_URL_FILE": str(directory / url_name)})
        parts = urlsplit(url.store_url)
        assert parts.scheme == "postgresql"
        assert parts.hostname == "postgres"
        assert parts.port in (None, 5432)
        assert parts.username == postgres_env["POSTGRES_USER"]
        assert parts.path == "/" + postgres_env["POSTGRES_DB"]
        assert parts.password == password
        assert len(password) >= 32
        assert owners == {url_name: image_uid(), password_name: POSTGRES_UID}
        for name in (url_name, password_name):
            assert stat.S_IMODE((directory / name).stat().st_mode) == 0o400, name
        assert sorted(p.name for p in directory.iterdir()) == sorted((url_name, password_name))
        program()
        assert (directory / password_name).read_text(encoding="utf-8") == password


#: Every parser check: unit tests below, and the whole test where no runtime answers.
CHECKS: tuple[Callable[[], None], ...] = (
    check_two_stages_on_slim_python,
    check_wheels_of_every_service_extra,
    check_no_compiler_in_the_final_stage,
    check_a_fixed_non_root_user,
    check_a_writable_data_directory_with_the_keys_file,
    check_healthcheck_on_healthz,
    check_agent_core_serve_is_the_entry_point,
    check_what_the_dockerfile_copies_is_in_the_context,
    check_dockerignore_keeps_the_rest_out,
    check_compose_follows_the_compose_spec,
    check_app_postgres_and_redis_with_health_checks,
    check_the_app_starts_after_healthy_postgres_and_redis,
    check_every_variable_is_one_agent_core_reads,
    check_only_the_app_is_published_on_loopback,
    check_the_generated_password_and_store_url_agree,
)


@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
def test_parser_check(check: Callable[[], None]) -> None:
    check()


# -- with a container runtime -----------------------------------------------------------


class NoContainerRuntime(UserWarning):
    """No image was built: the Dockerfile and compose.yaml were checked with parsers only."""


def container_runtime() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr[-4000:]}"
    return done.stdout.strip()


def get(url: str) -> int:
    """The status of GET url (loopback, no proxy), or 0 if nothing answers yet."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.integration
def test_the_image_builds_and_serves() -> None:
    """Build, run, /healthz 200, Docker's health check healthy, the uid fixed, requests
    without a key refused; compose.yaml accepted by ``docker compose config``."""
    if not container_runtime():
        for check in CHECKS:
            check()
        warnings.warn(
            NoContainerRuntime(
                "no container runtime (`docker info` failed): the image was not built; "
                "Dockerfile, .dockerignore and compose.yaml passed the parser checks"
            ),
            stacklevel=1,
        )
        return
    tag = f"agent-core-test:{uuid.uuid4().hex[:12]}"
    docker("build", "--tag", tag, str(ROOT), timeout=1800)
    try:
        assert docker("run", "--rm", "--entrypoint", "id", tag, "-u") == str(image_uid())
        container = docker("run", "--detach", "--publish", "127.0.0.1::8000", tag)
        try:
            base = "http://" + docker("port", container, "8000/tcp").splitlines()[0]

            def logs() -> str:
                return docker("logs", container)

            def healthy() -> bool:
                status = docker("inspect", "--format", "{{.State.Health.Status}}", container)
                return status == "healthy"

            eventually_sync(
                lambda: get(f"{base}/healthz") == 200, within=120, interval=0.5, show=logs
            )
            assert get(f"{base}/v1/threads") == 401, "no key yet: every request is refused"
            eventually_sync(healthy, within=180, interval=2, show=logs)
        finally:
            docker("rm", "--force", container)
    finally:
        docker("image", "rm", "--force", tag)
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        docker("compose", "--file", str(COMPOSE), "config", "--quiet")
