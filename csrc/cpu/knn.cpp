// Exact k nearest neighbours (fastattn.knn) from a k-d tree: common code, no ISA flags (the search
// is branchy and memory-bound, SIMD would not help), queries spread over OpenMP threads.
//
// Build: points are copied in float64 (so float32 distances are exact enough to rank: a difference
// of two float32 values is exact in float64) and split recursively at the median of the
// coordinate with the widest spread, down to leaves of at most kLeaf points stored contiguously.
// Search: depth first, nearer child first, a far child visited only when the splitting plane is
// not farther than the current k-th best (equal distance is visited, so ties resolve exactly).
// Candidates are ranked by (squared distance, index): ties go to the lower index.
#include "cpu/knn.h"
#include "cpu/threads.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastattn {
namespace cpu {
namespace {

constexpr int64_t kLeaf = 16;

struct Node {
  int64_t begin, end;       // range of tree-ordered points
  int64_t left = -1, right = -1;  // children (node ids), -1 for a leaf
  int64_t dim = 0;
  double split = 0.0;
};

struct Tree {
  int64_t d;
  std::vector<double> coords;  // tree order, (n, d)
  std::vector<int64_t> ids;    // original index of each tree-ordered point
  std::vector<Node> nodes;

  Tree(const double* points, int64_t n, int64_t dims) : d(dims), ids(size_t(n)) {
    for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = i;
    nodes.reserve(size_t(2 * (n / kLeaf + 1)));
    if (n > 0) build(points, 0, n);
    coords.resize(size_t(n * d));
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(&coords[size_t(i * d)], points + ids[size_t(i)] * d, size_t(d) * sizeof(double));
  }

  int64_t build(const double* points, int64_t begin, int64_t end) {
    const int64_t id = int64_t(nodes.size());
    nodes.push_back(Node{begin, end});
    if (end - begin <= kLeaf) return id;
    int64_t dim = 0;
    double widest = -1.0;
    for (int64_t x = 0; x < d; ++x) {
      double lo = points[ids[size_t(begin)] * d + x], hi = lo;
      for (int64_t i = begin + 1; i < end; ++i) {
        const double c = points[ids[size_t(i)] * d + x];
        lo = std::min(lo, c);
        hi = std::max(hi, c);
      }
      if (hi - lo > widest) {
        widest = hi - lo;
        dim = x;
      }
    }
    const int64_t mid = begin + (end - begin) / 2;
    std::nth_element(ids.begin() + begin, ids.begin() + mid, ids.begin() + end,
                     [&](int64_t a, int64_t b) { return points[a * d + dim] < points[b * d + dim]; });
    const double split = points[ids[size_t(mid)] * d + dim];
    const int64_t left = build(points, begin, mid);
    const int64_t right = build(points, mid, end);
    Node& node = nodes[size_t(id)];
    node.left = left;
    node.right = right;
    node.dim = dim;
    node.split = split;
    return id;
  }
};

// The k best (distance, index) pairs seen so far, sorted ascending.
struct Best {
  int64_t k, size = 0;
  double* dist;
  int64_t* index;

  bool better(double d2, int64_t i, int64_t slot) const {
    return d2 < dist[slot] || (d2 == dist[slot] && i < index[slot]);
  }
  double worst() const { return size < k ? std::numeric_limits<double>::infinity() : dist[k - 1]; }
  void offer(double d2, int64_t i) {
    if (size == k && !better(d2, i, k - 1)) return;
    int64_t at = size < k ? size++ : k - 1;
    while (at > 0 && better(d2, i, at - 1)) {
      dist[at] = dist[at - 1];
      index[at] = index[at - 1];
      --at;
    }
    dist[at] = d2;
    index[at] = i;
  }
};

// rd: squared distance from q to the node's cell, as far as the splits on the way down bound it;
// off[x]: q's offset from the cell along x (0 inside). Going to the far child replaces one term
// (Arya and Mount's incremental distance), which prunes far better than the plane alone.
void search(const Tree& tree, int64_t node_id, const double* q, double rd, double* off, Best& best) {
  const Node& node = tree.nodes[size_t(node_id)];
  if (node.left < 0) {
    const int64_t d = tree.d;
    for (int64_t i = node.begin; i < node.end; ++i) {
      const double* c = &tree.coords[size_t(i * d)];
      double d2 = 0.0;
      for (int64_t x = 0; x < d; ++x) d2 += (c[x] - q[x]) * (c[x] - q[x]);
      best.offer(d2, tree.ids[size_t(i)]);
    }
    return;
  }
  const double diff = q[node.dim] - node.split;
  search(tree, diff < 0 ? node.left : node.right, q, rd, off, best);
  const double old = off[node.dim];
  const double far_rd = rd - old * old + diff * diff;
  if (far_rd <= best.worst()) {  // equal distance is visited: a tie there may have a lower index
    off[node.dim] = diff;
    search(tree, diff < 0 ? node.right : node.left, q, far_rd, off, best);
    off[node.dim] = old;
  }
}

std::vector<double> as_double(const void* data, bool f64, int64_t count) {
  std::vector<double> out(static_cast<size_t>(count));
  if (f64) {
    // not for count 0: out.data() may then be null, and memcpy from or to null is undefined
    if (count > 0) std::memcpy(out.data(), data, size_t(count) * sizeof(double));
  } else {
    const float* f = static_cast<const float*>(data);
    for (int64_t i = 0; i < count; ++i) out[size_t(i)] = f[i];
  }
  return out;
}

}  // namespace

void knn(const KnnParams& p) {
  // The points are their own queries only when the two arrays are the same rows: a view of the
  // first rows of the points (queries=points[:m]) has the same address but fewer rows.
  const bool self = p.queries == p.points && p.nq == p.n;
  const std::vector<double> points = as_double(p.points, p.f64, p.n * p.d);
  const std::vector<double> queries = self ? points : as_double(p.queries, p.f64, p.nq * p.d);
  const Tree tree(points.data(), p.n, p.d);
  const int64_t found = std::min(p.k, p.n);
  const bool parallel = p.num_threads > 1 && p.nq * (found + 1) > 4096;
  int failed = 0;
  // The searches: in a parallel region when `parallel` (the omp for inside shares them out), else
  // on the calling thread without entering OpenMP at all (a forked child may not; threads.h).
  const auto searches = [&] {
    double* dist = new (std::nothrow) double[size_t(std::max<int64_t>(found, 1) + p.d)];
    double* off = dist + std::max<int64_t>(found, 1);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 256)
#endif
    for (int64_t at = 0; at < p.nq; ++at) {
      // The points as their own queries go in tree order: consecutive searches visit the same leaves.
      const int64_t i = self ? tree.ids[size_t(at)] : at;
      int64_t* row = p.index + i * p.k;
      if (!dist) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
        failed = 1;
        continue;
      }
      Best best{found, 0, dist, row};
      for (int64_t x = 0; x < p.d; ++x) off[x] = 0.0;
      if (found > 0) search(tree, 0, &queries[size_t(i * p.d)], 0.0, off, best);
      for (int64_t j = found; j < p.k; ++j) row[j] = -1;
    }
    delete[] dist;
  };
  if (parallel) {
    note_parallel_region();
#ifdef _OPENMP
#pragma omp parallel num_threads(p.num_threads)
#endif
    searches();
  } else {
    searches();
  }
  if (failed) throw std::bad_alloc();
}

}  // namespace cpu
}  // namespace fastattn
