"""The Dockerfile and compose.yaml an operator builds from, checked against the real CLI and Settings.

No container engine runs here, so these read the files: every command must parse with the CLI
parser the image runs, every setting must be one Settings reads, and the order of things
(dependencies before code, migrations before replicas) must hold.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.kit.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET_SETTINGS = {"SLOTPOOL_DATA_KEY", "SLOTPOOL_INDEX_KEY", "SLOTPOOL_API_KEY_PEPPER"}
INTERPOLATED = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]*\}$")
# The password comes from .env; compose refuses to start when it is unset (the postgres
# service requires each one with ${VAR:?}).
DATABASE_URL = re.compile(
    r"^postgresql://(?P<user>[a-z_]+):\$\{(?P<password>[A-Z][A-Z0-9_]*)\}@(?P<host>[a-z]+):5432/slotpool$"
)


def settings_env_names() -> set[str]:
    """Every environment variable Settings reads."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.update(str(c).upper() for c in choices)
        else:
            names.add(f"SLOTPOOL_{name.upper()}")
    return names


def parse_slotpool(argv: list[str]) -> Any:
    """What the CLI makes of a container's argv; fails the test if it would refuse it."""
    assert argv[0] == "slotpool", argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"the CLI refuses {argv}")


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation"
    return out


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form CMD; fails for the shell form."""
    assert arguments.startswith("["), f"not exec form: {arguments}"
    argv = json.loads(arguments)
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
    return argv


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8"))


def test_dockerfile_parser_reads_continuations_and_skips_comments():
    text = 'FROM x\n# a comment\nRUN a \\\n # inside\n && b\nCMD ["slotpool"]\n'
    assert dockerfile_instructions(text) == [("FROM", "x"), ("RUN", "a  && b"), ("CMD", '["slotpool"]')]


def test_dependencies_are_installed_from_pyproject_before_the_code_is_copied(dockerfile):
    index = {i: (op, args) for i, (op, args) in enumerate(dockerfile)}
    copy_service = next(i for i, (op, args) in index.items() if op == "COPY" and args.split()[0] == "service")
    installs = [i for i, (op, args) in index.items() if op == "RUN" and "pip install" in args]
    deps = [i for i in installs if i < copy_service]
    assert deps, "no pip install before COPY service: every code change reinstalls the dependencies"
    assert "pyproject.toml" in dockerfile[deps[0]][1]
    copies_before = [shlex.split(args) for op, args in dockerfile[: deps[0]] if op == "COPY"]
    assert copies_before == [["pyproject.toml", "./"]], "only pyproject.toml may precede the dependency layer"
    after = [i for i in installs if i > copy_service]
    assert after and all("--no-deps" in dockerfile[i][1] for i in after)


def test_image_runs_as_a_non_root_user(dockerfile):
    users = [args for op, args in dockerfile if op == "USER"]
    assert users, "no USER: the image runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    last_user = max(i for i, (op, _) in enumerate(dockerfile) if op == "USER")
    cmd = max(i for i, (op, _) in enumerate(dockerfile) if op == "CMD")
    assert last_user < cmd


def test_healthcheck_is_exec_form(dockerfile):
    checks = [args for op, args in dockerfile if op == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")
    assert all(o.startswith("--") for o in options.split())
    argv = exec_form(command.strip())
    assert argv[0] == "python" and "/healthz" in argv[-1]


def test_image_serves_without_migrating(dockerfile):
    assert not any(op == "ENTRYPOINT" for op, _ in dockerfile)
    cmds = [args for op, args in dockerfile if op == "CMD"]
    args = parse_slotpool(exec_form(cmds[-1]))
    assert args.command == "serve"
    assert not getattr(args, "migrate", False)
    assert not args.demo


# --- compose.yaml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def slotpool_services(services) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("build") == "."}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, so each variable can be checked"
    return {str(k): str(v) for k, v in env.items()}


def test_compose_runs_postgres_pgbouncer_migrate_two_api_replicas_and_a_worker(services):
    assert {"postgres", "pgbouncer", "migrate", "api", "worker"} <= set(services)
    ours = slotpool_services(services)
    assert set(ours) == {"migrate", "api", "worker"}
    commands = {name: parse_slotpool(s["command"]) for name, s in ours.items()}
    assert commands["migrate"].command == "migrate"
    assert commands["api"].command == "serve" and commands["api"].no_loops
    assert not getattr(commands["api"], "migrate", False) and not commands["api"].demo
    assert commands["worker"].command == "worker"
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["migrate"]["restart"] == "no"


def test_compose_sets_only_settings_that_exist(services):
    known = settings_env_names()
    assert {"DATABASE_URL", "SLOTPOOL_MIGRATION_DATABASE_URL", "SLOTPOOL_METRICS_PORT"} <= known
    for name, service in services.items():
        for variable in environment(service):
            if variable.startswith("SLOTPOOL_") or variable == "DATABASE_URL":
                assert variable in known, f"{name}: {variable} is not a setting"
    for name, service in slotpool_services(services).items():
        env = environment(service)
        assert env["SLOTPOOL_ENV"] == "production", name
        assert "DATABASE_URL" in env, name


def test_compose_holds_no_literal_secret(services):
    for name, service in services.items():
        for variable, value in environment(service).items():
            if variable in SECRET_SETTINGS or variable.endswith("PASSWORD"):
                assert INTERPOLATED.match(value), f"{name}: {variable} must come from .env"
            if "://" in value:
                url = DATABASE_URL.match(value)
                assert url, f"{name}: {variable} must take its password from .env"
                required = environment(services["postgres"]).get(url["password"], "")
                assert INTERPOLATED.match(required), f"{url['password']} is required by the postgres service"
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assigned = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    assert all(value == "" for value in assigned.values()), ".env.example holds no value"
    needed = {
        m.group(1)
        for s in services.values()
        for v in environment(s).values()
        for m in re.finditer(r"\$\{([A-Z0-9_]+)[:}]", v)
    }
    assert needed == set(assigned), "every interpolated variable is listed in .env.example"


def url_part(url: str, part: str) -> str:
    match = DATABASE_URL.match(url)
    assert match, url
    return match[part]


def test_api_goes_through_pgbouncer_and_the_listening_worker_does_not(services):
    assert url_part(environment(services["api"])["DATABASE_URL"], "host") == "pgbouncer"
    assert url_part(environment(services["worker"])["DATABASE_URL"], "host") == "postgres"
    migrate = environment(services["migrate"])
    assert url_part(migrate["SLOTPOOL_MIGRATION_DATABASE_URL"], "host") == "postgres"
    owner = url_part(migrate["SLOTPOOL_MIGRATION_DATABASE_URL"], "user")
    runtime = {
        url_part(environment(services[s])["DATABASE_URL"], "user") for s in ("migrate", "api", "worker")
    }
    assert runtime == {"slotpool_app"} and owner == "slotpool_owner"
    bouncer = environment(services["pgbouncer"])
    assert bouncer["POOL_MODE"] == "transaction"
    assert int(bouncer["MAX_PREPARED_STATEMENTS"]) > 0  # asyncpg's prepared statements
    assert re.search(r":v1\.(2[1-9]|[3-9]\d)\.", services["pgbouncer"]["image"]), "PgBouncer 1.21+"


def test_migrations_complete_before_any_replica_or_worker_starts(services):
    depends = {name: s.get("depends_on", {}) for name, s in services.items()}
    assert depends["migrate"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert depends[name]["migrate"]["condition"] == "service_completed_successfully", name
    assert depends["api"]["pgbouncer"]["condition"] == "service_healthy"
    assert depends["pgbouncer"]["postgres"]["condition"] == "service_healthy"


def test_every_long_running_service_has_an_exec_form_health_check(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        if name == "migrate":  # a one-shot: its exit status is what depends_on waits for
            assert check == {"disable": True}
            continue
        test = check["test"]
        assert isinstance(test, list) and test[0] == "CMD", f"{name}: not exec form: {test}"
        assert len(test) > 2 and all(isinstance(a, str) for a in test)
    assert "/readyz" in services["api"]["healthcheck"]["test"][-1]
    port = environment(services["worker"])["SLOTPOOL_METRICS_PORT"]
    assert f":{port}/metrics" in services["worker"]["healthcheck"]["test"][-1]


def test_dockerignore_keeps_the_build_context_to_what_the_image_needs():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", "bench", "docs", ".env*", "**/__pycache__"} <= ignored
    assert not ignored & {"service", "alembic", "pyproject.toml", "README.md"}
