// The AVX-512 path (F, BW, DQ, VL) in full 16-wide registers. Compiled with those flags; dispatch
// calls it only when cpuid and xgetbv say the CPU and OS support them.
#define FASTATTN_ISA avx512
#include "cpu/simd_avx512.h"

namespace fastattn {
namespace avx512 {
// 32 zmm registers. Wide block: 8 keys (or value dims) x 3 vectors of 16 queries = 24
// accumulators + 3 loaded + 1 broadcast; 8 divides the usual head dims (12 x 2 left a 4-row tail
// at 64 and 128, and its 12 key-row pointers did not fit the integer registers). Narrow block
// (decode): 24 x 1. Items of about 192 queries: lq = 1024 splits into five items of 192 and one
// of 64 (two 32-query blocks), where 144 left a last item of 16 on the narrow block. Measured on
// a 2-core Cascade Lake (bench/RESULTS.md, eighth session): 12 x 2 with 128-query items reached
// 84 GFLOP/s on one thread at (1,8,1024,1024,64), this tuning 100-104.
struct Tuning {
  static constexpr int micro_rows = 8, micro_vecs = 3, narrow_rows = 24;
  static constexpr long block_n = 96, block_n_short = 96, cols_target = 192;
};
}  // namespace avx512
}  // namespace fastattn

#include "cpu/kernels.h"
#include "cpu/sdpa_kernel.h"
#include "cpu/attention_kernel.h"
#include "cpu/linear_kernel.h"
#include "cpu/vector_attention_kernel.h"
#include "cpu/layer_norm_kernel.h"

// Calls of at most 65536 flops (4 B Hq Lq Lk D: (1,1,1,16,16,16) has 16384) run on the AVX2
// kernel: 16 queries or fewer fill at most one 512-bit vector and the 24-key narrow blocks are half
// padding at Lk = 16, so the AVX-512 kernel was slower there, and from Python the whole call took
// 0.5-1.3 us longer (5.4 against 4.8 us for the tiny shape; Cascade Lake, bench/RESULTS.md). From
// (1,1,1,32,32,32) on, the AVX-512 kernel is faster.
void fastattn::cpu::sdpa_avx512(const SdpaParams& p) {
  const double flops = 4.0 * double(p.batch) * double(p.hq) * double(p.lq) * double(p.lk) * double(p.d);
  if (flops <= 65536.0)
    sdpa_avx2(p);
  else
    fastattn::avx512::sdpa(p);
}
void fastattn::cpu::attention_avx512(const AttentionParams& p) { fastattn::avx512::attention(p); }
void fastattn::cpu::linear_avx512(const LinearParams& p) { fastattn::avx512::linear(p); }
// A weight MLP whose hidden units and groups fit 256 bits (Point Transformer v2's 8 and 8 in
// float32) runs on the AVX2 kernel's fast path, where a pair's hidden row and its weight row are
// one register each: 512-bit vectors would be half padding, W1 delta twice the multiply-adds and
// each vector of channels would span two groups. The PTv2 layer of bench/bench_vector_attention.py
// took 60 ms here against 26 on the AVX2 kernel (2 threads, Cascade Lake). Every CPU with
// AVX-512 F/BW/DQ/VL has AVX2, FMA and F16C. Wider MLPs (9 to 16 hidden units and groups) take
// this kernel's own fast path.
void fastattn::cpu::vector_attention_avx512(const VectorAttentionParams& p) {
  if (vector_attention_fast_path_avx2(p))
    vector_attention_avx2(p);
  else
    fastattn::avx512::vector_attention(p);
}
void fastattn::cpu::layer_norm_avx512(const LayerNormParams& p) { fastattn::avx512::layer_norm(p); }
