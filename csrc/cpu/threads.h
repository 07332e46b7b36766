// The thread count every CPU kernel uses: set_num_threads(), else FASTATTN_NUM_THREADS, else
// OMP_NUM_THREADS, else all cores. Each parallel region asks for it explicitly, so it wins over
// whatever the OpenMP runtime was told elsewhere.
#pragma once

#include <string>

namespace fastattn {
namespace cpu {

int get_num_threads();
void set_num_threads(int n);  // n >= 1, checked by the caller
bool openmp_enabled();
// For bug reports: the OpenMP runtime this process uses ("libgomp.so.1 (/usr/lib/...)"), or why
// there is none, and the OpenMP version the build was compiled against (the _OPENMP date, 0 if none).
std::string openmp_runtime();
long openmp_version();

}  // namespace cpu
}  // namespace fastattn
