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

}  // namespace cpu
}  // namespace fastattn
