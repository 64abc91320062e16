"""Developer sessions. Run ``uv run nox -l`` to list them; ``uv run nox -s tests`` is the CI suite.

Every session uses uv as its virtual-environment backend and installs the workspace from the
committed ``uv.lock`` (``uv sync --frozen``), so sessions see exactly the locked versions.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PACKAGES = {
    "xtal_repr": "packages/xtal-repr",
    "flowcore": "packages/flowcore",
    "xtal_eval": "packages/xtal-eval",
    "crystalflow": "packages/crystalflow-cli",
}


def _sync(session: nox.Session, *extra: str) -> None:
    """Install the locked workspace (all members, dev group) into the session's environment."""
    session.run_install(
        "uv",
        "sync",
        "--frozen",
        "--inexact",
        *extra,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


def _pytest(session: nox.Session, *paths: str) -> None:
    workers = os.environ.get("PYTEST_WORKERS", "auto")
    existing = [p for p in paths if os.path.isdir(p)]
    if not existing:
        session.error(f"no test folders among {paths}")
    args = session.posargs or ["-q", "-n", workers, "--durations=15", *existing]
    session.run("pytest", *args, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (all four packages), in parallel over the available cores."""
    _sync(session)
    _pytest(session, *[f"{p}/tests" for p in PACKAGES.values()])


def _package_session(name: str, path: str) -> None:
    @nox.session(name=name)
    def _session(session: nox.Session) -> None:
        # only this member and the dependencies it declares (no other workspace member, no dev
        # group): an import its pyproject does not declare fails here
        dist = Path(path).name
        session.run_install(
            "uv",
            "sync",
            "--frozen",
            "--package",
            dist,
            "--no-default-groups",
            env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
            external=True,
        )
        session.install("pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100")
        _pytest(session, f"{path}/tests")

    _session.__doc__ = f"Tests of {path} alone, installed with only its declared dependencies."


for _name, _path in PACKAGES.items():
    _package_session(_name, _path)


@nox.session(name="xtal_repr_notorch")
def xtal_repr_notorch(session: nox.Session) -> None:
    """xtal-repr installed alone (no torch anywhere): its tests must pass, torch tests skip."""
    session.install("./packages/xtal-repr[ase]", "pytest", "hypothesis", "scipy")
    session.run(
        "python",
        "-c",
        "import importlib.util, sys; sys.exit('torch is installed' if importlib.util.find_spec('torch') else 0)",
    )
    session.run("pytest", "-q", "packages/xtal-repr/tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole repository; mypy over xtal-repr and flowcore (typed: py.typed)."""
    _sync(session)  # ruff and mypy come with the dev group; mypy reads numpy/torch/pymatgen types
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "packages/xtal-repr/src/xtal_repr", "packages/flowcore/src/flowcore")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ``uv run nox -s bench -- NAME [ARGS...]`` runs bench/NAME.py or bench/bench_NAME.py.

    NAME is e.g. ``datasets``, ``gnn``, ``matching``, ``table1``, ``table3``, ``quality_per_step``,
    ``quality_vs_time``, ``profile_steps`` (default: datasets).
    """
    _sync(session)
    name, *rest = session.posargs or ["datasets"]
    script = Path("bench") / f"{name}.py"
    if not script.is_file():
        script = Path("bench") / f"bench_{name}.py"
    if not script.is_file():
        session.error(f"no benchmark {name!r}: neither bench/{name}.py nor bench/bench_{name}.py")
    session.run("python", str(script), *rest)
