// Exact k-nearest-neighbour search (fastattn.knn); one implementation for every CPU, in knn.cpp.
#pragma once

#include "fastattn/knn_params.h"

namespace fastattn {
namespace cpu {

void knn(const KnnParams& p);  // throws std::bad_alloc when memory runs out

}  // namespace cpu
}  // namespace fastattn
