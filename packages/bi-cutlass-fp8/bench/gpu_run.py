"""One device call: build the CUTLASS kernel, run the GPU tests, then the benchmark.

Prints the build time, ``GPU TESTS: <passed> passed, <failed> failed, ...`` and the bench
geomeans; writes ``gpu_run.json`` (plus the pytest log and the bench JSON/PNG) to ``$OUT``.

Needs the CUTLASS headers: the ``nvidia-cutlass`` wheel installed (e.g. ``pip install --no-deps
--target /tmp/site nvidia_cutlass-4.2.0.0-py3-none-any.whl`` and ``/tmp/site`` on
``PYTHONPATH``) or ``BI_CUTLASS_FP8_CUTLASS_DIR`` pointing at a CUTLASS checkout.

Run from the repository root::

    python packages/bi-cutlass-fp8/bench/gpu_run.py [--no-bench] [--bench-args ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from _common import PACKAGE, PACKAGES, add_src_paths, environment, out_dir

add_src_paths()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [
        str(PACKAGES / p / "src") for p in ("bi-cutlass-fp8", "ir-dispatch", "bi-triton-ascend")
    ]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def build() -> dict[str, Any]:
    """Build (or load) the extension in this process; report seconds and any error."""
    start = time.perf_counter()
    try:
        import bi_cutlass_fp8
        from bi_cutlass_fp8 import _jit

        os.environ.setdefault(_jit.ENV_VERBOSE, "1")
        module = bi_cutlass_fp8.get_module()
        return {
            "ok": True,
            "seconds": round(time.perf_counter() - start, 1),
            "kernels": list(module.kernel_names()),
            "cache": str(_jit.cache_dir()),
        }
    except Exception as err:
        traceback.print_exc()
        return {
            "ok": False,
            "seconds": round(time.perf_counter() - start, 1),
            "error": f"{type(err).__name__}: {err}",
        }


def run_tests(out: Path, timeout: int) -> dict[str, Any]:
    """The package's tests (CPU and GPU) in a subprocess; parse pytest's summary line."""
    log = out / "pytest.log"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(PACKAGE / "tests"),
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        text, rc = text + f"\nTIMEOUT after {timeout}s", 124
    log.write_text(text)
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped")}
    summary = next(
        (ln for ln in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)),
        "",
    )
    for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary):
        counts["errors" if word.startswith("error") else word] = int(number)
    tail = "\n".join(
        ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR", "SKIPPED"))
    )
    print(tail[-6000:])
    print(
        f"GPU TESTS: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['errors']} errors, {counts['skipped']} skipped (rc={rc}, "
        f"{time.perf_counter() - start:.0f}s; log: {log.name})"
    )
    return {"rc": rc, **counts, "summary_line": summary}


def run_bench(out: Path, timeout: int, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(PACKAGE / "bench" / "bench_fp8.py"), *extra]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        text, rc = f"TIMEOUT after {timeout}s", 124
    (out / "bench.log").write_text(text)
    print(text[-7000:])
    result: dict[str, Any] = {"rc": rc, "seconds": round(time.perf_counter() - start, 1)}
    bench_json = out / "bench_fp8.json"
    if bench_json.is_file():
        result["summary"] = json.loads(bench_json.read_text()).get("summary")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-bench", action="store_true")
    parser.add_argument("--test-timeout", type=int, default=240)
    parser.add_argument("--bench-timeout", type=int, default=300)
    parser.add_argument("--bench-args", nargs=argparse.REMAINDER, default=["--all-configs"])
    args = parser.parse_args()
    out = out_dir()
    report: dict[str, Any] = {**environment()}
    report["build"] = build()
    print(f"BUILD: {json.dumps(report['build'])[:2000]}")
    if report["build"]["ok"]:
        report["tests"] = run_tests(out, args.test_timeout)
        if not args.no_bench:
            report["bench"] = run_bench(out, args.bench_timeout, args.bench_args)
    (out / "gpu_run.json").write_text(json.dumps(report, indent=1, default=str))
    ok = report["build"]["ok"] and report.get("tests", {}).get("rc") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
