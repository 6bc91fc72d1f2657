// A batch-invariant FP8 (e4m3) scaled GEMM for SM90 (Hopper), built from CUTLASS 3.x.
//
// Why it is batch-invariant: the tile, cluster, schedule and accumulation mode are template
// parameters chosen in Python from (N, K) only (bi_cutlass_fp8/_configs.py), never from M.
// Every output element is then reduced by the same chain - k-tiles walked in order into one
// accumulator, the same wgmma instruction shape, no split-K or stream-K - whatever the number
// of tokens, and a token's row never shares arithmetic with other rows.
//
// Orientation ("swap-AB"): the kernel computes out^T = W @ a^T, so the weight rows sit on the
// 64-row wgmma side and the tokens on the narrow wgmma N side at every M. That keeps decode
// (M = 1..32) from wasting a 64-row MMA on one token, and keeps the operand roles fixed.
//   CUTLASS problem (M', N', K) = (N, M, K)
//   A' = W      [N, K]  K-major  (cutlass::layout::RowMajor)     - the user's b, column-major
//   B' = a^T    [K, M]  K-major  (cutlass::layout::ColumnMajor)  - the user's a, row-major
//   D' = out^T  [N, M]  (cutlass::layout::ColumnMajor)           - the user's out, row-major
//
// Epilogue (an epilogue visitor tree, computed in fp32, one rounding to the output dtype):
//   out^T[i, j] = fma(acc[i, j] * scale_a[j], scale_b[i], bias[i])
// scale_a (per token) broadcasts along D' columns: Sm90RowBroadcast; scale_b (per channel)
// and bias broadcast along D' rows: Sm90ColBroadcast. The scale broadcasts use CUTLASS's
// dynamic (bool) stride, so one instantiation serves both per-tensor and per-row scales, and
// a null bias pointer reads as zeros, so one instantiation serves both with and without bias.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/float8.h"
#include "cutlass/functional.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "cutlass/util/packed_stride.hpp"

#include "bi_fp8_api.h"

namespace bi_fp8 {

// The epilogue visitor tree: fma(acc * scale_a[token], scale_b[channel], bias[channel]).
template <class TileShape, class ElementD>
struct ScaleBiasEpilogue {
  using Compute = float;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  // Per-token scale: one value per D' column; the bool stride picks vector (true) or scalar.
  using ScaleToken = cutlass::epilogue::fusion::Sm90RowBroadcast<
      0, TileShape, float, Compute, cute::Stride<cute::_0, bool, int64_t>>;
  // Per-channel scale: one value per D' row; same dynamic vector-or-scalar stride.
  using ScaleChannel = cutlass::epilogue::fusion::Sm90ColBroadcast<
      0, TileShape, float, Compute, cute::Stride<bool, cute::_0, int64_t>>;
  // Bias: one value per D' row in the output dtype; a null pointer reads as zeros.
  using Bias = cutlass::epilogue::fusion::Sm90ColBroadcast<
      0, TileShape, ElementD, Compute, cute::Stride<cute::_1, cute::_0, int64_t>>;

  using Mul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, Compute, Compute, kRound>;
  using Fma = cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, ElementD,
                                                     Compute, kRound>;

  using AccTimesScaleToken = cutlass::epilogue::fusion::Sm90EVT<Mul, Acc, ScaleToken>;
  using Tree = cutlass::epilogue::fusion::Sm90EVT<Fma, AccTimesScaleToken, ScaleChannel, Bias>;

  static typename Tree::Arguments arguments(const GemmParams& p) {
    using ElementBias = ElementD;
    return typename Tree::Arguments{
        {
            {},                                                           // acc
            {p.scale_a, 0.0f, {cute::_0{}, p.scale_a_per_token, 0}},      // scale_a
            {},                                                           // multiplies
        },
        {p.scale_b, 0.0f, {p.scale_b_per_channel, cute::_0{}, 0}},        // scale_b
        {static_cast<const ElementBias*>(p.bias), ElementBias(0.0f), {}},  // bias
        {},                                                               // fma
    };
  }
};

// One fixed kernel configuration. All parameters come from the generated instance file,
// which spells them from the Python config table.
template <int TileW, int TileT, int TileK, int ClusterW, int ClusterT, class KernelSchedule,
          class EpilogueSchedule, class TileScheduler, class ElementD>
struct Sm90ScaledGemm {
  using ElementAB = cutlass::float_e4m3_t;
  using ElementAcc = float;
  using TileShape = cute::Shape<cute::Int<TileW>, cute::Int<TileT>, cute::Int<TileK>>;
  using ClusterShape = cute::Shape<cute::Int<ClusterW>, cute::Int<ClusterT>, cute::_1>;

  using LayoutW = cutlass::layout::RowMajor;     // A' = weight [N, K], K-major
  using LayoutX = cutlass::layout::ColumnMajor;  // B' = a^T [K, M], K-major
  using LayoutOut = cutlass::layout::ColumnMajor;  // D' = out^T [N, M]

  static constexpr int kAlignAB = 128 / cutlass::sizeof_bits<ElementAB>::value;  // 16
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;    // 8

  using Epilogue = ScaleBiasEpilogue<TileShape, ElementD>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float,
      void, LayoutOut, kAlignD,      // no source tensor C
      ElementD, LayoutOut, kAlignD,  // D
      EpilogueSchedule, typename Epilogue::Tree>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementAB, LayoutW, kAlignAB,
      ElementAB, LayoutX, kAlignAB,
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>,
                                                      CollectiveMainloop, CollectiveEpilogue,
                                                      TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const GemmParams& p) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    // Packed strides first (they fix the static unit strides), then the real leading dims.
    StrideA stride_w = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(p.n, p.k, 1));
    StrideB stride_x = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(p.m, p.k, 1));
    StrideD stride_o = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(p.n, p.m, 1));
    cute::get<0>(stride_w) = p.ldb;
    cute::get<0>(stride_x) = p.lda;
    cute::get<1>(stride_o) = p.ldo;

    cutlass::KernelHardwareInfo hw_info;
    hw_info.device_id = p.device_id;
    hw_info.sm_count = p.sm_count;

    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {p.n, p.m, p.k, 1},
        {static_cast<const ElementAB*>(p.b), stride_w, static_cast<const ElementAB*>(p.a),
         stride_x},
        {Epilogue::arguments(p), nullptr, stride_o, static_cast<ElementD*>(p.out), stride_o},
        hw_info,
    };
    return args;
  }

  static size_t workspace(const GemmParams& p) {
    return Gemm::get_workspace_size(arguments(p));
  }

  static int run(const GemmParams& p, cudaStream_t stream) {
    auto args = arguments(p);
    Gemm gemm;
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) {
      return kCannotImplement;
    }
    if (Gemm::get_workspace_size(args) > p.workspace_bytes) {
      return kWorkspaceTooSmall;
    }
    if (gemm.initialize(args, p.workspace, stream) != cutlass::Status::kSuccess) {
      return kInitializeFailed;
    }
    if (gemm.run(stream) != cutlass::Status::kSuccess) {
      return kRunFailed;
    }
    return kOk;
  }
};

}  // namespace bi_fp8
