"""JIT build of the CUTLASS extension: sources, flags, cache, and the cached module getter.

The C++ side is generated from the Python config table (:data:`~._configs.SM90_CONFIGS`): one
``instance_<config>_<dtype>.cu`` per (config, output dtype) plus a ``bi_fp8_table.h`` listing
them, so the kernel can only run tiles that :func:`~._configs.select_config` can return, and a
kernel is chosen by an index computed in Python from ``(N, K)``. Each instance is its own
translation unit, so ninja compiles them in parallel.

The build runs once per (sources, flags, torch, CUTLASS) combination and lands in
``$BI_CUTLASS_FP8_CACHE`` (default: ``$XDG_CACHE_HOME/bi_cutlass_fp8`` or
``~/.cache/bi_cutlass_fp8``); later processes load the built library from there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from . import _platform
from ._configs import SM90_CONFIGS, TileConfig

CSRC = Path(__file__).parent / "csrc"
HAND_WRITTEN_SOURCES = ("bi_fp8_api.h", "bi_fp8_sm90.cuh", "bi_fp8_binding.cpp")
OUT_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)
_CUTLASS_ELEMENT = {torch.bfloat16: "cutlass::bfloat16_t", torch.float16: "cutlass::half_t"}
_DTYPE_CODE = {torch.bfloat16: 0, torch.float16: 1}
_DTYPE_SUFFIX = {torch.bfloat16: "bf16", torch.float16: "fp16"}

ENV_CACHE = "BI_CUTLASS_FP8_CACHE"
ENV_CUTLASS = "BI_CUTLASS_FP8_CUTLASS_DIR"
ENV_VERBOSE = "BI_CUTLASS_FP8_VERBOSE"
CUDA_EXTRA = 'pip install "bi-cutlass-fp8[cuda]"'
DEFAULT_CUDA_HOME = Path("/usr/local/cuda")


class BuildError(RuntimeError):
    """The extension cannot be built here (no nvcc, no CUTLASS headers, no SM90 GPU)."""


# ----------------------------------------------------------------------------- toolchain
def cutlass_root() -> Path:
    """The directory holding CUTLASS's ``include/`` and ``tools/util/include/``.

    ``$BI_CUTLASS_FP8_CUTLASS_DIR`` (a CUTLASS checkout) wins; otherwise the headers shipped in
    the ``nvidia-cutlass`` wheel (``cutlass_library/source``). The package is located without
    importing it (its import pulls optional Python deps we do not need).

    Raises:
        BuildError: neither is available.
    """
    override = os.environ.get(ENV_CUTLASS)
    if override:
        root = Path(override)
        if not (root / "include" / "cutlass" / "cutlass.h").is_file():
            raise BuildError(
                f"{ENV_CUTLASS}={override!r} does not look like a CUTLASS checkout: "
                f"expected {root / 'include/cutlass/cutlass.h'}"
            )
        return root
    spec = importlib.util.find_spec("cutlass_library")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            root = Path(location) / "source"
            if (root / "include" / "cutlass" / "cutlass.h").is_file():
                return root
    raise BuildError(
        "CUTLASS headers not found: install the nvidia-cutlass wheel "
        f"({CUDA_EXTRA}, it ships the headers under cutlass_library/source) or point "
        f"{ENV_CUTLASS} at a CUTLASS checkout"
    )


def cutlass_include_dirs() -> list[str]:
    """Include directories for the CUTLASS headers (core and ``tools/util``)."""
    root = cutlass_root()
    return [str(root / "include"), str(root / "tools" / "util" / "include")]


def cutlass_version() -> str:
    """The installed nvidia-cutlass version (or ``checkout`` for an override directory)."""
    if os.environ.get(ENV_CUTLASS):
        return "checkout:" + os.environ[ENV_CUTLASS]
    try:
        return importlib.metadata.version("nvidia-cutlass")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def find_cuda_home() -> Path:
    """The CUDA toolkit root: ``$CUDA_HOME``/``$CUDA_PATH``, else where ``nvcc`` really lives.

    ``nvcc`` on ``PATH`` may be a wrapper script (``/usr/local/bin/nvcc`` exec'ing the real
    one), whose grandparent is not the toolkit; nvcc's own ``--dryrun`` names its directory.

    Raises:
        BuildError: no toolkit found.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return Path(home)
    found = shutil.which("nvcc")
    if found:
        here = _nvcc_directory(found)
        if here is not None and (here / "nvcc").is_file():
            return here.parent
        real = Path(found).resolve()
        if (real.parent.parent / "include" / "cuda_runtime.h").is_file():
            return real.parent.parent
    if (DEFAULT_CUDA_HOME / "bin" / "nvcc").is_file():
        return DEFAULT_CUDA_HOME
    raise BuildError(
        "nvcc not found: the CUTLASS FP8 kernel is compiled on first use and needs the CUDA "
        "toolkit (>= 12.3 for sm_90a); set CUDA_HOME or put nvcc on PATH"
    )


def _nvcc_directory(nvcc: str) -> Path | None:
    """The directory nvcc reports as ``_HERE_`` in a dry run, or ``None``."""
    try:
        proc = subprocess.run(
            [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (proc.stdout + proc.stderr).splitlines():
        if "_HERE_=" in line:
            return Path(line.split("_HERE_=", 1)[1].strip())
    return None


def find_nvcc() -> Path:
    """``<CUDA home>/bin/nvcc`` (see :func:`find_cuda_home`).

    Raises:
        BuildError: no nvcc.
    """
    return find_cuda_home() / "bin" / "nvcc"


# ----------------------------------------------------------------------------- flags
def arch_flags(arch: int = 90) -> list[str]:
    """``-gencode`` flags for ``sm<arch>``; SM90 needs the arch-specific ``sm_90a`` target.

    wgmma and the TMA multicast paths exist only on ``sm_90a``; a plain ``sm_90`` build
    compiles CUTLASS's kernels to a trap.
    """
    if arch != 90:
        raise ValueError(f"arch_flags: only sm90 kernels are built, got sm{arch}")
    return ["-gencode=arch=compute_90a,code=sm_90a"]


# torch's cpp_extension defines these for every .cu file; CUDA's half/bfloat16 operators are
# part of what CUTLASS's numeric types build on, so undo them (the flags come after torch's).
_UNDO_TORCH_DEFINES = (
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
)


def nvcc_flags(arch: int = 90) -> list[str]:
    """Every nvcc flag of the build.

    No ``--use_fast_math``: it would change the epilogue's float semantics. ``-std=c++17``
    keeps torch from asking C++20 of nvcc; the ``.cu`` files never include torch.
    """
    return [
        *arch_flags(arch),
        "-std=c++17",
        "--expt-relaxed-constexpr",
        "-O3",
        "-DNDEBUG",
        *_UNDO_TORCH_DEFINES,
        "-Xptxas=--warn-on-spills",
    ]


def host_flags() -> list[str]:
    """Host compiler flags of the binding (torch picks the C++ standard its headers need)."""
    return ["-O3", "-DNDEBUG"]


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class KernelSpec:
    """One compiled kernel: a tile config and an output dtype."""

    config: TileConfig
    out_dtype: torch.dtype

    @property
    def symbol(self) -> str:
        return f"{self.config.name}_{_DTYPE_SUFFIX[self.out_dtype]}"

    @property
    def key(self) -> str:
        """The ``config:dtype`` name the extension reports for this entry."""
        return f"{self.config.name}:{str(self.out_dtype).removeprefix('torch.')}"


def kernel_specs(configs: tuple[TileConfig, ...] = SM90_CONFIGS) -> list[KernelSpec]:
    """The table of built kernels, in ``kernel_index`` order."""
    for cfg in configs:
        if not cfg.built or cfg.arch != 90:
            raise ValueError(f"config {cfg.name!r} is not a built sm90 config")
    return [KernelSpec(cfg, dt) for cfg in configs for dt in OUT_DTYPES]


@functools.cache
def kernel_index(config_name: str, out_dtype: torch.dtype) -> int:
    """Index of ``(config, out_dtype)`` in the generated table (what the binding launches)."""
    for i, spec in enumerate(kernel_specs()):
        if spec.config.name == config_name and spec.out_dtype == out_dtype:
            return i
    raise ValueError(f"no built kernel for config {config_name!r} with out_dtype {out_dtype}")


def instance_source(spec: KernelSpec) -> str:
    """The generated ``.cu`` text of one kernel instantiation."""
    cfg = spec.config
    kernel_schedule, epilogue_schedule, scheduler = cfg.cutlass_types()
    return f"""\
// Generated by bi_cutlass_fp8._jit from the config table in _configs.py - do not edit.
// {cfg.name}: {cfg.note}
#include "bi_fp8_sm90.cuh"

namespace bi_fp8 {{

using Gemm_{spec.symbol} = Sm90ScaledGemm<
    {cfg.tile_w}, {cfg.tile_t}, {cfg.tile_k}, {cfg.cluster_w}, {cfg.cluster_t},
    {kernel_schedule},
    {epilogue_schedule},
    {scheduler},
    {_CUTLASS_ELEMENT[spec.out_dtype]}>;

int run_{spec.symbol}(const GemmParams& p, cudaStream_t stream) {{
  return Gemm_{spec.symbol}::run(p, stream);
}}

size_t workspace_{spec.symbol}(const GemmParams& p) {{
  return Gemm_{spec.symbol}::workspace(p);
}}

}}  // namespace bi_fp8
"""


def table_source(specs: list[KernelSpec]) -> str:
    """The generated ``bi_fp8_table.h``: declarations and the ``kKernels`` table."""
    decls = "\n".join(
        f"int run_{s.symbol}(const GemmParams&, cudaStream_t);\n"
        f"size_t workspace_{s.symbol}(const GemmParams&);"
        for s in specs
    )
    rows = "\n".join(
        f'    {{"{s.config.name}", {_DTYPE_CODE[s.out_dtype]}, &run_{s.symbol}, '
        f"&workspace_{s.symbol}}},"
        for s in specs
    )
    return f"""\
// Generated by bi_cutlass_fp8._jit from the config table in _configs.py - do not edit.
#pragma once
#include "bi_fp8_api.h"

namespace bi_fp8 {{

{decls}

inline constexpr KernelEntry kKernels[] = {{
{rows}
}};
inline constexpr int kNumKernels = {len(specs)};

}}  // namespace bi_fp8
"""


def generated_sources(specs: list[KernelSpec] | None = None) -> dict[str, str]:
    """File name -> text of every generated source (instances and the table header)."""
    specs = kernel_specs() if specs is None else specs
    files = {f"instance_{s.symbol}.cu": instance_source(s) for s in specs}
    files["bi_fp8_table.h"] = table_source(specs)
    return files


def build_hash(specs: list[KernelSpec] | None = None) -> str:
    """Digest of everything that affects the binary: sources, flags, torch, CUDA, CUTLASS."""
    h = hashlib.sha256()
    for name in HAND_WRITTEN_SOURCES:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    for name, text in sorted(generated_sources(specs).items()):
        h.update(name.encode())
        h.update(text.encode())
    for part in (*nvcc_flags(), *host_flags(), torch.__version__, str(torch.version.cuda)):
        h.update(part.encode())
    h.update(cutlass_version().encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Root of the build cache: ``$BI_CUTLASS_FP8_CACHE`` or the user cache directory."""
    override = os.environ.get(ENV_CACHE)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bi_cutlass_fp8"


def write_sources(build_dir: Path, specs: list[KernelSpec] | None = None) -> list[str]:
    """Write the generated files into ``build_dir``; return the sources to compile.

    Files are rewritten only when their text changed, so ninja does not rebuild them.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(CSRC / "bi_fp8_binding.cpp")]
    for name, text in generated_sources(specs).items():
        path = build_dir / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        if name.endswith(".cu"):
            sources.append(str(path))
    return sources


# ----------------------------------------------------------------------------- build
def check_build_prerequisites() -> None:
    """Raise :class:`BuildError` with the reason if the kernel cannot be built and run here."""
    if not _platform.cuda_available():
        raise BuildError("bi_cutlass_fp8 needs an NVIDIA GPU; torch sees no CUDA device")
    arch = _platform.sm_version()
    if arch != 90:
        raise BuildError(
            f"bi_cutlass_fp8 kernels are built for sm90 (H100/H200) only; this GPU is sm{arch}. "
            "Use the batch-invariant 'dequant_bf16' provider instead"
        )
    find_nvcc()
    cutlass_root()


def build(verbose: bool | None = None) -> ModuleType:
    """Build (or load from the cache) the extension module.

    Raises:
        BuildError: prerequisites missing (see :func:`check_build_prerequisites`).
    """
    check_build_prerequisites()
    cpp_extension = _cpp_extension_for(find_cuda_home())
    specs = kernel_specs()
    digest = build_hash(specs)
    build_dir = cache_dir() / f"torch{torch.__version__}-cuda{torch.version.cuda}-{digest}"
    sources = write_sources(build_dir, specs)
    if verbose is None:
        verbose = os.environ.get(ENV_VERBOSE, "") not in ("", "0")
    module = cpp_extension.load(
        name=f"bi_cutlass_fp8_{digest}",
        sources=sources,
        extra_cflags=host_flags(),
        extra_cuda_cflags=nvcc_flags(),
        extra_include_paths=[str(CSRC), str(build_dir), *cutlass_include_dirs()],
        build_directory=str(build_dir),
        verbose=verbose,
    )
    names = list(module.kernel_names())
    expected = [s.key for s in specs]
    if names != expected:
        raise BuildError(
            f"stale extension in {build_dir}: it has kernels {names}, expected {expected}; "
            "delete that directory"
        )
    return module


def _cpp_extension_for(cuda_home: Path) -> ModuleType:
    """``torch.utils.cpp_extension``, checked to build with ``cuda_home``.

    cpp_extension reads ``CUDA_HOME`` once, when it is first imported, so it is set here first;
    if the module was imported earlier with a toolkit that has no nvcc, say how to fix it.
    """
    os.environ["CUDA_HOME"] = str(cuda_home)
    from torch.utils import cpp_extension

    seen = getattr(cpp_extension, "CUDA_HOME", None)
    if seen is None or not (Path(seen) / "bin" / "nvcc").is_file():
        raise BuildError(
            f"torch.utils.cpp_extension was imported with CUDA_HOME={seen!r}, which has no "
            f"bin/nvcc; set CUDA_HOME={cuda_home} before starting Python"
        )
    return cpp_extension


@functools.cache
def get_module() -> ModuleType:
    """The built extension, built on first use and cached for the process."""
    return build()
