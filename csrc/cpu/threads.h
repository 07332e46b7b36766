// The thread count every CPU kernel uses: set_num_threads(), else FASTATTN_NUM_THREADS, else
// OMP_NUM_THREADS, else all cores. Each parallel region asks for it explicitly, so it wins over
// whatever the OpenMP runtime was told elsewhere.
#pragma once

#include <string>

namespace fastattn {
namespace cpu {

// At most this many threads: OpenMP runtimes fail to create tens of thousands (libgomp crashed at
// 100000 here) and no CPU this library targets has a thousand cores. FASTATTN_NUM_THREADS and
// OMP_NUM_THREADS above it count as unset.
constexpr int kMaxThreads = 1024;

// 1 in a process forked after a kernel ran a parallel region (GNU OpenMP's thread pool does not
// survive fork(): the child's first parallel region would wait forever for threads that are gone).
int get_num_threads();
void set_num_threads(int n);  // 1 <= n <= kMaxThreads, checked by the caller
// Kernels call this as they enter a parallel region, so a later fork() knows the pool exists.
void note_parallel_region();
bool openmp_enabled();
// For bug reports: the OpenMP runtime this process uses ("libgomp.so.1 (/usr/lib/...)"), or why
// there is none, and the OpenMP version the build was compiled against (the _OPENMP date, 0 if none).
std::string openmp_runtime();
long openmp_version();

}  // namespace cpu
}  // namespace fastattn
