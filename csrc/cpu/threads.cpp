#include "cpu/threads.h"

#include <atomic>
#include <cstdlib>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define FASTATTN_HAVE_ATFORK 1
#endif

#ifdef _OPENMP
#include <omp.h>
#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define FASTATTN_HAVE_DLADDR 1
#endif
#endif

namespace fastattn {
namespace cpu {
namespace {

// A positive integer from the environment, or 0 when unset or not a positive integer.
int env_threads(const char* name) {
  const char* s = std::getenv(name);
  if (s == nullptr) return 0;
  char* end = nullptr;
  const long n = std::strtol(s, &end, 10);
  return (end != s && *end == '\0' && n > 0 && n <= kMaxThreads) ? int(n) : 0;
}

std::atomic<bool> entered_parallel{false};  // some kernel has run a parallel region
std::atomic<bool> forked_child{false};      // this process was forked after that

void on_fork_child() {
  if (entered_parallel.load()) forked_child.store(true);
}

int default_threads() {
  if (int n = env_threads("FASTATTN_NUM_THREADS")) return n;
  if (int n = env_threads("OMP_NUM_THREADS")) return n;
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}

// Also registers the fork handler, on the first kernel call: every kernel asks for the thread
// count before it could start a parallel region.
std::atomic<int>& threads() {
  static std::atomic<int> n{[] {
#ifdef FASTATTN_HAVE_ATFORK
    pthread_atfork(nullptr, nullptr, on_fork_child);
#endif
    return default_threads();
  }()};
  return n;
}

}  // namespace

int get_num_threads() {
#ifdef _OPENMP
  const int n = threads().load();
  return forked_child.load(std::memory_order_relaxed) ? 1 : n;
#else
  return 1;  // without OpenMP every kernel runs on the calling thread
#endif
}

void set_num_threads(int n) { threads().store(n); }

void note_parallel_region() { entered_parallel.store(true, std::memory_order_relaxed); }

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

std::string openmp_runtime() {
#ifndef _OPENMP
  return "none (built without OpenMP: every kernel runs on the calling thread)";
#elif defined(FASTATTN_HAVE_DLADDR)
  // The shared object that holds omp_get_max_threads is the runtime every parallel region uses
  // (libgomp, libomp, libiomp5); two runtimes in one process are a classic source of slowdowns.
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&omp_get_max_threads), &info) && info.dli_fname) {
    std::string path(info.dli_fname);
    const size_t slash = path.find_last_of('/');
    return (slash == std::string::npos ? path : path.substr(slash + 1)) + " (" + path + ")";
  }
  return "linked, but its library could not be located";
#else
  return "linked (library not located on this platform)";
#endif
}

long openmp_version() {
#ifdef _OPENMP
  return long(_OPENMP);
#else
  return 0;
#endif
}

}  // namespace cpu
}  // namespace fastattn
