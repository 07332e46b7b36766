// The boundary between the bindings and the k-nearest-neighbour search (fastattn.knn): plain
// pointers and sizes, checked by the Python layer.
#pragma once

#include <cstdint>

namespace fastattn {

// Exact k nearest neighbours by Euclidean distance, from a k-d tree (brute force is O(N^2)).
struct KnnParams {
  bool f64 = false;             // points and queries in float64; else float32
  int64_t n = 0, nq = 0, d = 0, k = 0;
  const void* points = nullptr;   // C-contiguous (n, d)
  const void* queries = nullptr;  // C-contiguous (nq, d)
  int64_t* index = nullptr;       // C-contiguous (nq, k): nearest first, ties to the lower index; -1 past n
  int num_threads = 1;
};

}  // namespace fastattn
