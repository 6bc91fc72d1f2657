// Torch binding of the batch-invariant FP8 GEMM.
//
// Python validates the arguments (with ValueError/TypeError naming each one) and picks the
// kernel - one (tile config, output dtype) entry of the generated table - from (N, K) only.
// This file repeats the layout checks as a last guard, fills GemmParams and launches on the
// current stream. It never chooses a tile: it has no access to M-dependent logic at all.
// Only c10's light CUDA headers: ATen/cuda/CUDAContext.h would pull cuBLAS/cuSPARSE headers,
// which a bare nvcc toolkit may not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <array>
#include <atomic>
#include <string>
#include <vector>

#include "bi_fp8_api.h"
#include "bi_fp8_table.h"  // generated from bi_cutlass_fp8/_configs.py: kKernels, kNumKernels

namespace {

const char* status_text(int status) {
  switch (status) {
    case bi_fp8::kOk: return "ok";
    case bi_fp8::kCannotImplement: return "CUTLASS can_implement() rejected the problem";
    case bi_fp8::kWorkspaceTooSmall: return "workspace too small";
    case bi_fp8::kInitializeFailed: return "CUTLASS initialize() failed";
    case bi_fp8::kRunFailed: return "CUTLASS kernel launch failed";
    case bi_fp8::kNotCompiledForArch: return "kernel not compiled for this GPU architecture";
    default: return "unknown status";
  }
}

bool is_scalar_scale(const torch::Tensor& s) { return s.numel() == 1; }

// SM count per device, queried once (the persistent kernels size their grid with it).
int sm_count(int device_id) {
  static std::array<std::atomic<int>, 64> cache{};
  if (device_id < 0 || device_id >= static_cast<int>(cache.size())) {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device_id));
    return count;
  }
  int count = cache[device_id].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device_id));
    cache[device_id].store(count, std::memory_order_relaxed);
  }
  return count;
}

// out = (a @ b) * scale_a * scale_b (+ bias), written into the preallocated `out`.
void scaled_mm_out(torch::Tensor out, const torch::Tensor& a, const torch::Tensor& b,
                   const torch::Tensor& scale_a, const torch::Tensor& scale_b,
                   const c10::optional<torch::Tensor>& bias, int64_t kernel_index) {
  TORCH_CHECK(kernel_index >= 0 && kernel_index < bi_fp8::kNumKernels,
              "bi_cutlass_fp8: kernel_index ", kernel_index, " out of range [0, ",
              bi_fp8::kNumKernels, ")");
  const bi_fp8::KernelEntry& entry = bi_fp8::kKernels[kernel_index];
  const int out_code = out.scalar_type() == at::kBFloat16 ? 0
                       : out.scalar_type() == at::kHalf   ? 1
                                                          : -1;
  TORCH_CHECK(out_code == entry.out_dtype, "bi_cutlass_fp8: out dtype ", out.scalar_type(),
              " does not match kernel ", entry.config_name);
  TORCH_CHECK(a.is_cuda() && b.is_cuda() && out.is_cuda() && scale_a.is_cuda() &&
                  scale_b.is_cuda(),
              "bi_cutlass_fp8: all tensors must be on a CUDA device");
  TORCH_CHECK(a.scalar_type() == at::kFloat8_e4m3fn && b.scalar_type() == at::kFloat8_e4m3fn,
              "bi_cutlass_fp8: a and b must be float8_e4m3fn");
  TORCH_CHECK(scale_a.scalar_type() == at::kFloat && scale_b.scalar_type() == at::kFloat,
              "bi_cutlass_fp8: scales must be float32");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "bi_cutlass_fp8: 2-D operands");
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  TORCH_CHECK(b.size(0) == k && out.size(0) == m && out.size(1) == n,
              "bi_cutlass_fp8: shape mismatch");
  TORCH_CHECK(a.stride(1) == 1 && b.stride(0) == 1 && out.stride(1) == 1,
              "bi_cutlass_fp8: a and out must be row-major, b column-major");
  TORCH_CHECK(is_scalar_scale(scale_a) || (scale_a.numel() == m && scale_a.is_contiguous()),
              "bi_cutlass_fp8: scale_a must have 1 or M contiguous elements");
  TORCH_CHECK(is_scalar_scale(scale_b) || (scale_b.numel() == n && scale_b.is_contiguous()),
              "bi_cutlass_fp8: scale_b must have 1 or N contiguous elements");
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_cuda() && bias->scalar_type() == out.scalar_type() &&
                    bias->numel() == n && bias->is_contiguous(),
                "bi_cutlass_fp8: bias must be a contiguous [N] tensor in the output dtype");
  }
  if (m == 0) {
    return;
  }

  const c10::cuda::CUDAGuard guard(a.device());
  const int device_id = a.get_device();
  bi_fp8::GemmParams p;
  p.a = a.data_ptr();
  p.b = b.data_ptr();
  p.scale_a = scale_a.data_ptr<float>();
  p.scale_b = scale_b.data_ptr<float>();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.lda = a.stride(0);
  p.ldb = b.stride(1);
  p.ldo = out.stride(0);
  p.m = static_cast<int>(m);
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.scale_a_per_token = !is_scalar_scale(scale_a);
  p.scale_b_per_channel = !is_scalar_scale(scale_b);
  p.device_id = device_id;
  p.sm_count = sm_count(device_id);

  torch::Tensor workspace;
  const size_t ws_bytes = entry.workspace(p);
  if (ws_bytes > 0) {
    workspace = torch::empty({static_cast<int64_t>(ws_bytes)},
                             torch::TensorOptions().dtype(torch::kUInt8).device(a.device()));
    p.workspace = workspace.data_ptr();
    p.workspace_bytes = ws_bytes;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device_id).stream();
  const int status = entry.run(p, stream);
  TORCH_CHECK(status == bi_fp8::kOk, "bi_cutlass_fp8: kernel ", entry.config_name, " (M=", m,
              ", N=", n, ", K=", k, "): ", status_text(status));
}

// "config_name:dtype" per table entry, in kernel_index order (Python checks it at load time).
std::vector<std::string> kernel_names() {
  std::vector<std::string> names;
  for (int i = 0; i < bi_fp8::kNumKernels; ++i) {
    names.push_back(std::string(bi_fp8::kKernels[i].config_name) +
                    (bi_fp8::kKernels[i].out_dtype == 0 ? ":bfloat16" : ":float16"));
  }
  return names;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "bi_cutlass_fp8: batch-invariant FP8 scaled GEMM (CUTLASS 3.x, SM90)";
  m.def("scaled_mm_out", &scaled_mm_out, "out = (a @ b) * scale_a * scale_b (+ bias)",
        pybind11::arg("out"), pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("scale_a"),
        pybind11::arg("scale_b"), pybind11::arg("bias"), pybind11::arg("kernel_index"));
  m.def("kernel_names", &kernel_names, "table entries as 'config:dtype', by kernel_index");
}
