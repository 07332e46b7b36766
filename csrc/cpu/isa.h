// Which CPU kernels this build has, which this CPU (and OS) can run, and which one is used.
#pragma once

#include <string>
#include <vector>

namespace fastattn {
namespace cpu {

enum class Isa { scalar, avx2, avx512 };

const char* isa_name(Isa isa);
std::vector<Isa> compiled_isas();
// Compiled and supported by this CPU and OS (cpuid feature bits and xgetbv-enabled register state).
std::vector<Isa> available_isas();
// The best available ISA, or the one FASTATTN_CPU_ISA forces. Decided once; throws
// std::runtime_error (with the same message every time) when the forced ISA is unknown or unusable.
Isa chosen_isa();
// Whether calls that fill only 256-bit vectors may run on the AVX2 kernels of an AVX-512 CPU
// (dispatch.h): true unless FASTATTN_CPU_HANDOVER=0, which the test suite sets to run the forced
// ISA's own kernels on every shape. Read once.
bool handover_enabled();

}  // namespace cpu
}  // namespace fastattn
