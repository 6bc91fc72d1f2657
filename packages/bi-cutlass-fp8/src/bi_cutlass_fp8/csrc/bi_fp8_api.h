// The plain-C++ boundary between the torch binding and the CUTLASS instantiations.
//
// The binding (bi_fp8_binding.cpp) sees only this header, so it compiles with the host
// compiler and never includes CUTLASS; each kernel instantiation (generated
// instance_*.cu files) sees only CUDA and CUTLASS, never torch. That keeps the slow CUTLASS
// translation units independent, so ninja builds them in parallel.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace bi_fp8 {

// One scaled GEMM, in the user's orientation:
//   out[m, n] = (sum_k a[m, k] * b[k, n]) * scale_a[m or 0] * scale_b[n or 0] + bias[n]
// a is row-major [M, K] (row stride lda); b is column-major [K, N] (column stride ldb), i.e.
// the row-major [N, K] weight; out is row-major [M, N] (row stride ldo).
struct GemmParams {
  const void* a = nullptr;         // float8_e4m3fn
  const void* b = nullptr;         // float8_e4m3fn
  const float* scale_a = nullptr;  // [1] or [M]
  const float* scale_b = nullptr;  // [1] or [N]
  const void* bias = nullptr;      // [N] in the output dtype, or nullptr
  void* out = nullptr;             // bfloat16 or float16
  int64_t lda = 0;
  int64_t ldb = 0;
  int64_t ldo = 0;
  int m = 0;
  int n = 0;
  int k = 0;
  bool scale_a_per_token = false;
  bool scale_b_per_channel = false;
  int device_id = 0;
  int sm_count = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Status codes returned by every instantiation (0 = success).
enum Status : int {
  kOk = 0,
  kCannotImplement = 1,   // CUTLASS can_implement() rejected the problem
  kWorkspaceTooSmall = 2,
  kInitializeFailed = 3,
  kRunFailed = 4,
  kNotCompiledForArch = 5,
};

using RunFn = int (*)(const GemmParams&, cudaStream_t);
using WorkspaceFn = size_t (*)(const GemmParams&);

// One entry per (tile config, output dtype) the extension was built with. The table itself is
// generated from the Python config table (bi_cutlass_fp8/_configs.py) into bi_fp8_table.h.
struct KernelEntry {
  const char* config_name;
  int out_dtype;  // 0 = bfloat16, 1 = float16
  RunFn run;
  WorkspaceFn workspace;
};

}  // namespace bi_fp8
