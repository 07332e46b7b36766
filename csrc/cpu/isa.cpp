// CPU feature detection with cpuid and xgetbv: a feature counts only when the CPU has it and the OS
// saves its registers on context switches (the XCR0 bits), as an AVX-512 CPU under an OS that does
// not enable ZMM state must never run AVX-512 code.
#include "cpu/isa.h"

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#if FASTATTN_HAVE_X86
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace fastattn {
namespace cpu {
namespace {

struct CpuFeatures {
  bool avx2 = false;    // AVX2 + FMA + F16C, with YMM state enabled
  bool avx512 = false;  // AVX-512 F/BW/DQ/VL, with opmask and ZMM state enabled, plus the above
};

#if FASTATTN_HAVE_X86
void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
#if defined(_MSC_VER)
  int r[4];
  __cpuidex(r, int(leaf), int(subleaf));
  for (int i = 0; i < 4; ++i) regs[i] = uint32_t(r[i]);
#else
  __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
#endif
}

uint64_t xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
  uint32_t r[4];
  cpuid(0, 0, r);
  const uint32_t max_leaf = r[0];
  if (max_leaf < 7) return f;
  cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1;
  const bool fma = (r[2] >> 12) & 1, f16c = (r[2] >> 29) & 1;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
  const bool zmm_state = (xcr0 & 0xe0) == 0xe0;   // opmask, ZMM0-15 upper halves, ZMM16-31
  cpuid(7, 0, r);
  const uint32_t ebx = r[1];
  const bool avx2 = (ebx >> 5) & 1;
  const bool avx512f = (ebx >> 16) & 1, avx512dq = (ebx >> 17) & 1;
  const bool avx512bw = (ebx >> 30) & 1, avx512vl = (ebx >> 31) & 1;
  f.avx2 = ymm_state && avx2 && fma && f16c;
  f.avx512 = f.avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl;
  return f;
}
#else
CpuFeatures detect() { return {}; }
#endif

const CpuFeatures& features() {
  static const CpuFeatures f = detect();
  return f;
}

bool supported(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2: return features().avx2;
    case Isa::avx512: return features().avx512;
  }
  return false;
}

std::string join_names(const std::vector<Isa>& isas) {
  std::string s;
  for (Isa isa : isas) s += (s.empty() ? "" : ", ") + std::string(isa_name(isa));
  return s;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

std::vector<Isa> compiled_isas() {
#if FASTATTN_HAVE_X86
  return {Isa::scalar, Isa::avx2, Isa::avx512};
#else
  return {Isa::scalar};
#endif
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : compiled_isas())
    if (supported(isa)) out.push_back(isa);
  return out;
}

bool handover_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("FASTATTN_CPU_HANDOVER");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

Isa chosen_isa() {
  static std::once_flag once;
  static Isa chosen = Isa::scalar;
  static std::string error;
  std::call_once(once, [] {
    const std::vector<Isa> available = available_isas();
    const char* forced = std::getenv("FASTATTN_CPU_ISA");
    if (forced == nullptr || *forced == '\0') {
      chosen = available.back();  // listed from least to most capable
      return;
    }
    const std::string want(forced);
    for (Isa isa : compiled_isas()) {
      if (want != isa_name(isa)) continue;
      if (supported(isa)) {
        chosen = isa;
      } else {
        error = "FASTATTN_CPU_ISA=" + want + " but this CPU (or OS) does not support " + want +
                "; available: " + join_names(available);
      }
      return;
    }
    error = "FASTATTN_CPU_ISA=" + want + " is not a known or compiled ISA; compiled: " +
            join_names(compiled_isas()) + "; available on this CPU: " + join_names(available);
  });
  if (!error.empty()) throw std::runtime_error(error);
  return chosen;
}

}  // namespace cpu
}  // namespace fastattn
