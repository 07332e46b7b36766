// fastattn._cpu: the CPU backend's Python entry points. The Python layer (fastattn/_sdpa_args.py)
// has already checked shapes, dtypes and options and normalised every operand; this file only turns
// NumPy arrays into the plain kernel structs (pointers, element strides, per-batch offsets), checks
// what memory safety needs, releases the GIL and calls the chosen ISA's kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/dispatch.h"
#include "cpu/isa.h"
#include "cpu/threads.h"
#include "fastattn/attention_params.h"
#include "fastattn/layer_norm_params.h"
#include "fastattn/sdpa_params.h"
#include "cpu/knn.h"
#include "fastattn/vector_attention_params.h"

namespace py = pybind11;
using fastattn::DType;
using fastattn::MaskKind;
using fastattn::SdpaParams;

namespace {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "?";
}

int64_t dtype_size(DType d) { return d == DType::f64 ? 8 : d == DType::f32 ? 4 : 2; }

// "cpu/<isa>/sdpa/<dtype>", made once per pair (last_kernel() is set on every call) and never
// freed, so no Python object outlives the interpreter in a static destructor.
py::str kernel_name(fastattn::cpu::Isa isa, DType dtype) {
  static py::str* names[3][4] = {};
  py::str*& name = names[int(isa)][int(dtype)];
  if (name == nullptr)
    name = new py::str(std::string("cpu/") + fastattn::cpu::isa_name(isa) + "/sdpa/" + dtype_name(dtype));
  return *name;
}

[[noreturn]] void internal_error(const std::string& what) {
  throw py::value_error("fastattn._cpu: " + what + " (the Python layer should have caught this)");
}

// Element stride of dim `dim`; 0 where the array has size 1 there (broadcast).
int64_t elem_stride(const py::array& a, py::ssize_t dim, int64_t itemsize) {
  if (a.shape(dim) == 1) return 0;
  if (a.strides(dim) % itemsize != 0) internal_error("stride not a multiple of the item size");
  return a.strides(dim) / itemsize;
}

// Element offset of each flattened batch index in `a`, whose first nb dims are batch dims of
// size 1 (broadcast) or batch_shape[i].
std::vector<int64_t> batch_offsets(const py::array& a, const std::vector<int64_t>& batch_shape,
                                   int64_t itemsize) {
  const size_t nb = batch_shape.size();
  int64_t count = 1;
  for (int64_t n : batch_shape) count *= n;
  std::vector<int64_t> strides(nb), index(nb, 0);
  std::vector<int64_t> offsets(static_cast<size_t>(count));
  for (size_t i = 0; i < nb; ++i) {
    if (a.shape(py::ssize_t(i)) != 1 && a.shape(py::ssize_t(i)) != batch_shape[i])
      internal_error("batch dims do not broadcast");
    strides[i] = elem_stride(a, py::ssize_t(i), itemsize);
  }
  for (int64_t b = 0; b < count; ++b) {
    int64_t off = 0;
    for (size_t i = 0; i < nb; ++i) off += index[i] * strides[i];
    offsets[size_t(b)] = off;
    for (size_t i = nb; i-- > 0;) {  // odometer increment, last dim fastest (C order)
      if (++index[i] < batch_shape[i]) break;
      index[i] = 0;
    }
  }
  return offsets;
}

// An element pointer that is not a multiple of the item size is undefined behaviour to load
// through (UBSan reports it; some CPUs fault), so every array the kernels read must be aligned.
void check_aligned(const py::array& a, const char* name) {
  if (reinterpret_cast<uintptr_t>(a.data()) % uintptr_t(a.itemsize()) != 0)
    internal_error(std::string(name) + " is not aligned to its item size");
}

void check_operand(const py::array& a, const char* name, py::ssize_t ndim, int64_t itemsize) {
  if (a.ndim() != ndim) internal_error(std::string(name) + " has the wrong ndim");
  if (a.itemsize() != itemsize) internal_error(std::string(name) + " has the wrong dtype");
  check_aligned(a, name);
  if (a.size() > 0 && a.shape(ndim - 1) > 1 && a.strides(ndim - 1) != itemsize)
    internal_error(std::string(name) + " is not contiguous in its last dim");
}


// The operands arrive as handles: the Python layer passes ndarrays, and checking that is cheaper
// than pybind11's conversion (PyArray_FromAny per array), which a tiny call would feel.
py::array as_array(py::handle h, const char* name) {
  if (!py::isinstance<py::array>(h)) internal_error(std::string(name) + " is not an ndarray");
  return py::reinterpret_borrow<py::array>(h);
}

// Query, key, value and output in kernel form, checked for what memory safety needs: one ndim
// (`core_dims` trailing dims after the batch dims), one item size, contiguous last dims and a
// C-contiguous output; with the batch shape (the output's leading dims) and each input's
// per-batch element offsets. Used while a call is bound; it keeps no array beyond that.
struct Operands {
  py::array q, k, v, out;
  int64_t itemsize = 0;
  py::ssize_t ndim = 0;
  std::vector<int64_t> batch_shape, q_off, k_off, v_off;
  int64_t batch = 1;

  Operands(py::handle q_handle, py::handle k_handle, py::handle v_handle, py::handle out_handle,
           py::ssize_t core_dims, int64_t want_itemsize)
      : q(as_array(q_handle, "query")), k(as_array(k_handle, "key")),
        v(as_array(v_handle, "value")), out(as_array(out_handle, "out")) {
    itemsize = want_itemsize ? want_itemsize : int64_t(out.itemsize());
    ndim = out.ndim();
    if (ndim < core_dims) internal_error("operands have too few dims");
    for (auto [a, name] : {std::pair<py::array*, const char*>{&q, "query"}, {&k, "key"},
                           {&v, "value"}, {&out, "out"}})
      check_operand(*a, name, ndim, itemsize);
    if (!(out.flags() & py::array::c_style)) internal_error("out is not C-contiguous");
    batch_shape.assign(out.shape(), out.shape() + (ndim - core_dims));
    for (int64_t n : batch_shape) batch *= n;
    q_off = batch_offsets(q, batch_shape, itemsize);
    k_off = batch_offsets(k, batch_shape, itemsize);
    v_off = batch_offsets(v, batch_shape, itemsize);
  }
  // Element stride of a's dim `from_end` dims before its end.
  int64_t stride(const py::array& a, py::ssize_t from_end) const {
    return elem_stride(a, ndim - from_end, itemsize);
  }
  // Data pointers, per-batch offsets and row strides of (batch..., rows, dim) operands into the
  // kernel params that name them alike (AttentionParams, VectorAttentionParams). The offsets stay
  // owned here, so `this` must outlive the kernel call.
  template <class Params>
  void wire_rows(Params& p) {
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.q_batch_offset = q_off.data();
    p.k_batch_offset = k_off.data();
    p.v_batch_offset = v_off.data();
    p.q_row_stride = stride(q, 2);
    p.k_row_stride = stride(k, 2);
    p.v_row_stride = stride(v, 2);
    p.out = out.mutable_data();
  }
};

// A mask in kernel form: bool (1 byte, nonzero = attend) or additive in the compute type, with the
// operands' ndim and each of its trailing dims 1 (broadcast) or the given size; with its per-batch
// element offsets and the element strides of its trailing dims (0 where broadcast).
struct MaskOperand {
  py::array array;
  MaskKind kind = MaskKind::none;
  std::vector<int64_t> offsets;
  std::vector<int64_t> strides;  // of the trailing dims, in order

  MaskOperand(py::handle mask, const Operands& ops, int64_t compute_size,
              const std::vector<int64_t>& trailing)
      : array(as_array(mask, "mask")) {
    const bool boolean = array.dtype().kind() == 'b';
    const int64_t itemsize = boolean ? 1 : compute_size;
    const py::ssize_t ndim = ops.ndim, first = ndim - py::ssize_t(trailing.size());
    if (array.ndim() != ndim || array.itemsize() != itemsize)
      internal_error("mask has the wrong ndim or dtype");
    check_aligned(array, "mask");
    for (size_t i = 0; i < trailing.size(); ++i) {
      const py::ssize_t n = array.shape(first + py::ssize_t(i));
      if (n != 1 && n != trailing[i]) internal_error("mask does not broadcast to the scores");
      strides.push_back(elem_stride(array, first + py::ssize_t(i), itemsize));
    }
    offsets = batch_offsets(array, ops.batch_shape, itemsize);
    kind = boolean ? MaskKind::boolean : MaskKind::additive;
  }
};

// A C-contiguous array of exactly `count` elements of `itemsize` bytes, else an internal error.
py::array contiguous_operand(py::handle h, const char* name, int64_t count, int64_t itemsize) {
  py::array a = as_array(h, name);
  if (a.size() != count || a.itemsize() != itemsize || !(a.flags() & py::array::c_style))
    internal_error(std::string(name) + " has the wrong size, dtype or layout");
  check_aligned(a, name);
  return a;
}

// One call's kernel parameters with the storage they point into (per-batch offsets, kv lengths)
// and references that keep the mask and lengths alive. Built from operands in kernel form.
struct BoundCall {
  SdpaParams p;
  std::vector<int64_t> q_off, k_off, v_off, mask_off, lengths;
  py::object mask_ref, lengths_ref, q_proj_ref, q_proj_bias_ref;
  fastattn::cpu::Isa isa = fastattn::cpu::Isa::scalar;

  BoundCall(const BoundCall&) = delete;
  BoundCall& operator=(const BoundCall&) = delete;

  BoundCall(py::handle q_handle, py::handle k_handle, py::handle v_handle, py::handle out_handle,
            py::handle lse, py::handle mask, py::handle kv_lengths, int dtype_code, double scale,
            int64_t diag, int64_t left, int64_t right, py::handle q_proj = py::none(),
            py::handle q_proj_bias = py::none()) {
    if (dtype_code < 0 || dtype_code > 3) internal_error("unknown dtype code");
    const DType dtype = static_cast<DType>(dtype_code);
    Operands ops(q_handle, k_handle, v_handle, out_handle, 3, dtype_size(dtype));
    const py::array &q = ops.q, &k = ops.k, &v = ops.v;
    const py::ssize_t ndim = ops.ndim;
    const size_t nb = ops.batch_shape.size();
    const std::vector<int64_t>& batch_shape = ops.batch_shape;
    p.dtype = dtype;
    p.batch = ops.batch;
    p.hq = ops.out.shape(ndim - 3);
    p.lq = ops.out.shape(ndim - 2);
    p.dv = ops.out.shape(ndim - 1);
    p.hkv = k.shape(ndim - 3);
    p.lk = k.shape(ndim - 2);
    p.d = k.shape(ndim - 1);
    const int64_t compute_size = dtype == DType::f64 ? 8 : 4;
    if (!q_proj.is_none()) {
      // Query rows of width dq, attended with W q + b (W (d, dq), b (d,) or None).
      p.dq = q.shape(ndim - 1);
      py::array w = contiguous_operand(q_proj, "q_proj", p.d * p.dq, compute_size);
      if (w.ndim() != 2 || w.shape(0) != p.d) internal_error("q_proj is not (d, dq)");
      p.q_proj = w.data();
      q_proj_ref = w;
      if (!q_proj_bias.is_none()) {
        py::array b = contiguous_operand(q_proj_bias, "q_proj_bias", p.d, compute_size);
        if (b.ndim() != 1) internal_error("q_proj_bias is not (d,)");
        p.q_proj_bias = b.data();
        q_proj_bias_ref = b;
      }
    } else if (q.shape(ndim - 1) != p.d || !q_proj_bias.is_none()) {
      internal_error("query and key widths differ, or a bias without a projection");
    }
    if (q.shape(ndim - 3) != p.hq || q.shape(ndim - 2) != p.lq ||
        v.shape(ndim - 3) != p.hkv || v.shape(ndim - 2) != p.lk || v.shape(ndim - 1) != p.dv ||
        (p.hkv == 0 ? p.hq != 0 : p.hq % p.hkv != 0))
      internal_error("inconsistent shapes");

    q_off = std::move(ops.q_off);
    k_off = std::move(ops.k_off);
    v_off = std::move(ops.v_off);
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.out = ops.out.mutable_data();
    p.q_batch_offset = q_off.data();
    p.k_batch_offset = k_off.data();
    p.v_batch_offset = v_off.data();
    p.q_head_stride = ops.stride(q, 3);
    p.q_row_stride = ops.stride(q, 2);
    p.k_head_stride = ops.stride(k, 3);
    p.k_row_stride = ops.stride(k, 2);
    p.v_head_stride = ops.stride(v, 3);
    p.v_row_stride = ops.stride(v, 2);

    if (!lse.is_none()) {
      py::array lse_array = as_array(lse, "lse");
      if (lse_array.size() != p.batch * p.hq * p.lq || lse_array.itemsize() != compute_size ||
          !(lse_array.flags() & py::array::c_style))
        internal_error("lse has the wrong size, dtype or layout");
      p.lse = lse_array.mutable_data();
    }

    if (!mask.is_none()) {
      MaskOperand m(mask, ops, compute_size, {p.hq, p.lq, p.lk});
      mask_off = std::move(m.offsets);
      p.mask_kind = m.kind;
      p.mask = m.array.data();
      p.mask_batch_offset = mask_off.data();
      p.mask_head_stride = m.strides[0];
      p.mask_row_stride = m.strides[1];
      p.mask_col_stride = m.strides[2];
      mask_ref = m.array;
    }

    if (!kv_lengths.is_none()) {
      py::array_t<int64_t> lengths_array = py::array_t<int64_t>::ensure(kv_lengths);
      if (!lengths_array) internal_error("kv_lengths is not an int64 array");
      if (size_t(lengths_array.ndim()) != nb) internal_error("kv_lengths has the wrong ndim");
      const std::vector<int64_t> off = batch_offsets(lengths_array, batch_shape, 8);
      lengths.resize(size_t(p.batch));
      for (size_t b = 0; b < lengths.size(); ++b) {
        lengths[b] = lengths_array.data()[off[b]];
        if (lengths[b] < 0 || lengths[b] > p.lk) internal_error("kv_lengths out of range");
      }
      p.kv_lengths = lengths.data();
      lengths_ref = lengths_array;
    }

    p.scale = scale;
    p.diag = diag;
    p.left = left < 0 ? fastattn::kUnbounded : left;
    p.right = right < 0 ? fastattn::kUnbounded : right;
    isa = fastattn::cpu::sdpa_isa(fastattn::cpu::chosen_isa(), p);
  }

  // Runs the chosen ISA's kernel on `params` (this call's, or a copy with other data pointers)
  // with the GIL released, on the current thread count.
  void run(SdpaParams params) const {
    params.num_threads = fastattn::cpu::get_num_threads();
    const fastattn::cpu::SdpaKernel kernel = fastattn::cpu::sdpa_kernel(isa);
    py::gil_scoped_release release;
    kernel(params);
  }
};

py::str sdpa(py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
             py::handle mask, py::handle kv_lengths, int dtype_code, double scale, int64_t diag,
             int64_t left, int64_t right, py::handle q_proj, py::handle q_proj_bias) {
  const BoundCall call(q, k, v, out, lse, mask, kv_lengths, dtype_code, scale, diag, left, right,
                       q_proj, q_proj_bias);
  call.run(call.p);
  return kernel_name(call.isa, call.p.dtype);
}

// A memoised call: the kernel parameters of a checked call whose operands needed no copy, with
// the data pointers left to fill in. run() takes the caller's arrays as they are; it returns None
// (and the caller runs the checks) unless each has the remembered shape, strides and dtype (the
// same dtype object: a byte-swapped float32 is another) and is aligned. The output is allocated
// here, in the caller's layout; the kernel-form views share their arrays' data pointers.
class SdpaPlan {
 public:
  SdpaPlan(py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
           int dtype_code, double scale, int64_t diag, int64_t left, int64_t right,
           py::tuple callers, py::handle result, py::handle lse_result)
      : call_(q, k, v, out, lse, py::none(), py::none(), dtype_code, scale, diag, left, right),
        kernel_(kernel_name(call_.isa, call_.p.dtype)) {
    if (callers.size() != 3) internal_error("a plan needs the caller's query, key and value");
    for (size_t i = 0; i < 3; ++i) layouts_[i] = Layout(as_array(callers[i], "operand"));
    const py::array result_array = as_array(result, "result");
    dtype_ = result_array.dtype();
    result_shape_.assign(result_array.shape(), result_array.shape() + result_array.ndim());
    if (!lse_result.is_none()) {
      const py::array lse_array = as_array(lse_result, "lse");
      lse_dtype_ = lse_array.dtype();
      lse_shape_.assign(lse_array.shape(), lse_array.shape() + lse_array.ndim());
      return_lse_ = true;
    }
  }

  py::object run(py::handle q, py::handle k, py::handle v) const {
    const py::handle operands[3] = {q, k, v};
    for (int i = 0; i < 3; ++i)
      if (!layouts_[i].matches(operands[i], dtype_)) return py::none();
    SdpaParams p = call_.p;
    p.q = py::reinterpret_borrow<py::array>(q).data();
    p.k = py::reinterpret_borrow<py::array>(k).data();
    p.v = py::reinterpret_borrow<py::array>(v).data();
    py::array result(dtype_, result_shape_);
    p.out = result.mutable_data();
    if (!return_lse_) {
      call_.run(p);
      return std::move(result);
    }
    py::array lse(lse_dtype_, lse_shape_);
    p.lse = lse.mutable_data();
    call_.run(p);
    return py::make_tuple(result, lse);
  }

  const py::str& kernel() const { return kernel_; }

 private:
  struct Layout {
    std::vector<py::ssize_t> shape, strides;
    Layout() = default;
    explicit Layout(const py::array& a)
        : shape(a.shape(), a.shape() + a.ndim()), strides(a.strides(), a.strides() + a.ndim()) {}
    bool matches(py::handle h, const py::dtype& dtype) const {
      if (!py::isinstance<py::array>(h)) return false;
      const auto a = py::reinterpret_borrow<py::array>(h);
      constexpr int kAligned = 0x0100;  // NPY_ARRAY_ALIGNED
      if (size_t(a.ndim()) != shape.size() || a.dtype().ptr() != dtype.ptr() ||
          !(a.flags() & kAligned))
        return false;
      for (size_t i = 0; i < shape.size(); ++i)
        if (a.shape()[i] != shape[i] || a.strides()[i] != strides[i]) return false;
      return true;
    }
  };

  BoundCall call_;
  py::str kernel_;
  Layout layouts_[3];
  py::dtype dtype_, lse_dtype_;
  std::vector<py::ssize_t> result_shape_, lse_shape_;
  bool return_lse_ = false;
};

// fastattn.attention on operands in kernel form: q (*batch, lq, d), k (*batch, lk, d),
// v (*batch, lk, dv), out C-contiguous (*batch, lq, dv), all float32 or all float64, batch dims of
// size 1 or the full size; weights None or C-contiguous (*batch, lq, lk); mask None or
// (*batch, lq, lk)-broadcastable, bool or the compute dtype; w None or (d,) for additive scores.
py::str attention(py::handle q_handle, py::handle k_handle, py::handle v_handle,
                  py::handle out_handle, py::handle weights, py::handle mask, py::handle w,
                  int score_code, int act_code, double bias, int align_code) {
  using fastattn::AttentionParams;
  Operands ops(q_handle, k_handle, v_handle, out_handle, 2, 0);
  const py::array &q = ops.q, &k = ops.k, &v = ops.v, &out = ops.out;
  const int64_t itemsize = ops.itemsize;
  const py::ssize_t ndim = ops.ndim;
  if (itemsize != 4 && itemsize != 8) internal_error("attention computes in float32 or float64");
  if (score_code < 0 || score_code > 2 || act_code < 0 || act_code > 3 || align_code < 0 ||
      align_code > 3)
    internal_error("unknown score, activation or alignment code");

  AttentionParams p;
  p.f64 = itemsize == 8;
  p.batch = ops.batch;
  p.lq = out.shape(ndim - 2);
  p.dv = out.shape(ndim - 1);
  p.lk = k.shape(ndim - 2);
  p.d = q.shape(ndim - 1);
  if (q.shape(ndim - 2) != p.lq || k.shape(ndim - 1) != p.d || v.shape(ndim - 2) != p.lk ||
      v.shape(ndim - 1) != p.dv)
    internal_error("inconsistent shapes");
  ops.wire_rows(p);
  p.score = static_cast<fastattn::ScoreKind>(score_code);
  p.act = static_cast<fastattn::Activation>(act_code);
  p.bias = bias;
  p.align = static_cast<fastattn::AlignKind>(align_code);

  py::array w_array, weights_array;
  if (p.score == fastattn::ScoreKind::additive) {
    w_array = as_array(w, "w");
    if (w_array.ndim() != 1 || w_array.shape(0) != p.d || w_array.itemsize() != itemsize ||
        !(w_array.flags() & py::array::c_style))
      internal_error("w must be a contiguous (d,) array in the compute dtype");
    check_aligned(w_array, "w");
    p.w = w_array.data();
  }
  if (!weights.is_none()) {
    weights_array = as_array(weights, "weights");
    if (weights_array.size() != p.batch * p.lq * p.lk || weights_array.itemsize() != itemsize ||
        !(weights_array.flags() & py::array::c_style))
      internal_error("weights has the wrong size, dtype or layout");
    p.weights = weights_array.mutable_data();
  }
  std::unique_ptr<MaskOperand> m;
  if (!mask.is_none()) {
    m = std::make_unique<MaskOperand>(mask, ops, itemsize, std::vector<int64_t>{p.lq, p.lk});
    p.mask_kind = m->kind;
    p.mask = m->array.data();
    p.mask_batch_offset = m->offsets.data();
    p.mask_row_stride = m->strides[0];
    p.mask_col_stride = m->strides[1];
  }
  p.num_threads = fastattn::cpu::get_num_threads();
  const fastattn::cpu::Isa isa = fastattn::cpu::chosen_isa();
  const fastattn::cpu::AttentionKernel kernel = fastattn::cpu::attention_kernel(isa);
  {
    py::gil_scoped_release release;
    kernel(p);
  }
  return py::str(std::string("cpu/") + fastattn::cpu::isa_name(isa) + "/attention/" +
                 (p.f64 ? "float64" : "float32"));
}

// fastattn.vector_attention on operands in kernel form (see fastattn/_vector_args.py): q
// (*batch, lq, c), k and v (*batch, key_rows, c), out C-contiguous (*batch, lq, c), all float32 or
// all float64; index None or C-contiguous int64 (lq, lk), values already checked, with no batch
// dims; pos None or (*batch, lq or 1, lk or 1, c); mask None or (*batch, lq or 1, lk or 1), bool or
// the compute dtype; mlp None or (w1, b1, w2, b2) C-contiguous; weights None or C-contiguous
// (*batch, lq, lk, groups).
py::str vector_attention(py::handle q_handle, py::handle k_handle, py::handle v_handle,
                         py::handle out_handle, py::handle weights, py::handle index,
                         py::handle pos, py::handle mask, py::handle mlp, int64_t groups,
                         int relation_code, int sharing_code) {
  using fastattn::VectorAttentionParams;
  Operands ops(q_handle, k_handle, v_handle, out_handle, 2, 0);
  const py::array &q = ops.q, &k = ops.k, &v = ops.v, &out = ops.out;
  const int64_t itemsize = ops.itemsize;
  const py::ssize_t ndim = ops.ndim;
  if (itemsize != 4 && itemsize != 8) internal_error("vector_attention computes in float32 or float64");
  if (relation_code < 0 || relation_code > 2 || sharing_code < 0 || sharing_code > 1)
    internal_error("unknown relation or sharing code");

  VectorAttentionParams p;
  p.f64 = itemsize == 8;
  p.batch = ops.batch;
  p.lq = out.shape(ndim - 2);
  p.c = out.shape(ndim - 1);
  p.key_rows = k.shape(ndim - 2);
  p.groups = groups;
  if (q.shape(ndim - 2) != p.lq || q.shape(ndim - 1) != p.c || k.shape(ndim - 1) != p.c ||
      v.shape(ndim - 2) != p.key_rows || v.shape(ndim - 1) != p.c || p.c < 1 || groups < 1 ||
      p.c % groups != 0)
    internal_error("inconsistent shapes or groups");
  ops.wire_rows(p);
  p.relation = static_cast<fastattn::Relation>(relation_code);
  p.sharing = static_cast<fastattn::Sharing>(sharing_code);

  py::array index_array, pos_array, weights_array, mlp_arrays[4];
  std::vector<int64_t> pos_off;
  p.lk = p.key_rows;
  if (!index.is_none()) {
    index_array = as_array(index, "index");
    if (ndim != 2 || index_array.ndim() != 2 || index_array.shape(0) != p.lq ||
        index_array.dtype().kind() != 'i')
      internal_error("index must be (lq, lk) with no batch dims");
    p.lk = index_array.shape(1);
    contiguous_operand(index, "index", p.lq * p.lk, 8);
    p.index = static_cast<const int64_t*>(index_array.data());
  }
  if (!pos.is_none()) {
    pos_array = as_array(pos, "pos");
    if (pos_array.ndim() != ndim + 1 || pos_array.itemsize() != itemsize ||
        pos_array.shape(ndim) != p.c ||
        (p.c > 1 && pos_array.size() > 0 && pos_array.strides(ndim) != itemsize))
      internal_error("pos must be (*batch, lq, lk, c) with contiguous channels");
    for (auto [dim, full] : {std::pair<py::ssize_t, int64_t>{ndim - 2, p.lq}, {ndim - 1, p.lk}})
      if (pos_array.shape(dim) != 1 && pos_array.shape(dim) != full)
        internal_error("pos does not broadcast to (lq, lk)");
    pos_off = batch_offsets(pos_array, ops.batch_shape, itemsize);
    p.pos = pos_array.data();
    p.pos_batch_offset = pos_off.data();
    p.pos_row_stride = elem_stride(pos_array, ndim - 2, itemsize);
    p.pos_col_stride = elem_stride(pos_array, ndim - 1, itemsize);
  }
  std::unique_ptr<MaskOperand> m;
  if (!mask.is_none()) {
    m = std::make_unique<MaskOperand>(mask, ops, itemsize, std::vector<int64_t>{p.lq, p.lk});
    p.mask_kind = m->kind;
    p.mask = m->array.data();
    p.mask_batch_offset = m->offsets.data();
    p.mask_row_stride = m->strides[0];
    p.mask_col_stride = m->strides[1];
  }
  if (!mlp.is_none()) {
    if (!py::isinstance<py::tuple>(mlp)) internal_error("mlp must be a 4-tuple");
    const py::tuple layers = py::reinterpret_borrow<py::tuple>(mlp);
    if (layers.size() != 4) internal_error("mlp must be a 4-tuple");
    const py::array w1 = as_array(layers[0], "w1");
    if (w1.ndim() != 2) internal_error("w1 must be 2-D");
    p.hidden = w1.shape(0);
    const int64_t sizes[4] = {p.hidden * p.c, p.hidden, groups * p.hidden, groups};
    const char* names[4] = {"w1", "b1", "w2", "b2"};
    for (int x = 0; x < 4; ++x) mlp_arrays[x] = contiguous_operand(layers[x], names[x], sizes[x], itemsize);
    if (p.hidden < 1) internal_error("the weight MLP needs a hidden layer");
    p.w1 = mlp_arrays[0].data();
    p.b1 = mlp_arrays[1].data();
    p.w2 = mlp_arrays[2].data();
    p.b2 = mlp_arrays[3].data();
  }
  if (!weights.is_none()) {
    weights_array = contiguous_operand(weights, "weights", p.batch * p.lq * p.lk * groups, itemsize);
    p.weights = weights_array.mutable_data();
  }
  p.num_threads = fastattn::cpu::get_num_threads();
  const fastattn::cpu::Isa isa = fastattn::cpu::vector_attention_isa(fastattn::cpu::chosen_isa(), p);
  const fastattn::cpu::VectorAttentionKernel kernel = fastattn::cpu::vector_attention_kernel(isa);
  {
    py::gil_scoped_release release;
    kernel(p);
  }
  return py::str(std::string("cpu/") + fastattn::cpu::isa_name(isa) + "/vector_attention/" +
                 (p.f64 ? "float64" : "float32"));
}

// fastattn.knn on checked operands: points (n, d) and queries (nq, d) C-contiguous, one float
// dtype; index C-contiguous int64 (nq, k), filled in. Returns the kernel's name.
py::str knn(py::handle points_handle, py::handle queries_handle, py::handle index_handle) {
  const py::array points = as_array(points_handle, "points");
  const py::array queries = as_array(queries_handle, "queries");
  py::array index = as_array(index_handle, "index");
  if (points.ndim() != 2 || queries.ndim() != 2 || index.ndim() != 2 ||
      queries.shape(1) != points.shape(1) || index.shape(0) != queries.shape(0))
    internal_error("knn operands have inconsistent shapes");
  const int64_t itemsize = points.itemsize();
  if (itemsize != 4 && itemsize != 8) internal_error("knn takes float32 or float64 points");
  fastattn::KnnParams p;
  p.f64 = itemsize == 8;
  p.n = points.shape(0);
  p.d = points.shape(1);
  p.nq = queries.shape(0);
  p.k = index.shape(1);
  contiguous_operand(points, "points", p.n * p.d, itemsize);
  contiguous_operand(queries, "queries", p.nq * p.d, itemsize);
  contiguous_operand(index, "index", p.nq * p.k, 8);
  if (index.dtype().kind() != 'i') internal_error("index must be int64");
  p.points = points.data();
  p.queries = queries.data();
  p.index = static_cast<int64_t*>(index.mutable_data());
  p.num_threads = fastattn::cpu::get_num_threads();
  // One portable implementation (no ISA-specific code), searching in float64 whatever the points;
  // still, a forced ISA the CPU lacks (or an unknown name) fails every kernel call alike, as README
  // says: chosen_isa() raises then.
  (void)fastattn::cpu::chosen_isa();
  {
    py::gil_scoped_release release;
    fastattn::cpu::knn(p);
  }
  static const py::str* name = new py::str("cpu/scalar/knn/float64");
  return *name;
}

// y = x W^T + b: x (m, k) contiguous within rows, w (n, k) and out (m, n) C-contiguous, b None or
// (n,) contiguous, all float32 or all float64. Returns the kernel's name.
py::str linear(py::handle x_handle, py::handle w_handle, py::handle b_handle, py::handle out_handle) {
  const py::array x = as_array(x_handle, "x"), w = as_array(w_handle, "w");
  py::array out = as_array(out_handle, "out");
  const int64_t itemsize = int64_t(out.itemsize());
  if (itemsize != 4 && itemsize != 8) internal_error("linear computes in float32 or float64");
  check_operand(x, "x", 2, itemsize);
  check_operand(w, "w", 2, itemsize);
  check_operand(out, "out", 2, itemsize);
  if (!(w.flags() & py::array::c_style) || !(out.flags() & py::array::c_style))
    internal_error("w and out must be C-contiguous");
  fastattn::LinearParams p;
  p.f64 = itemsize == 8;
  p.m = x.shape(0);
  p.k = x.shape(1);
  p.n = w.shape(0);
  if (w.shape(1) != p.k || out.shape(0) != p.m || out.shape(1) != p.n)
    internal_error("inconsistent shapes");
  py::array b;
  if (!b_handle.is_none()) {
    b = as_array(b_handle, "b");
    check_operand(b, "b", 1, itemsize);
    if (b.shape(0) != p.n) internal_error("b has the wrong size");
    p.b = b.data();
  }
  p.x = x.data();
  p.x_row_stride = elem_stride(x, 0, itemsize);
  p.w = w.data();
  p.y = out.mutable_data();
  p.num_threads = fastattn::cpu::get_num_threads();
  const fastattn::cpu::Isa isa = fastattn::cpu::chosen_isa();
  const fastattn::cpu::LinearKernel kernel = fastattn::cpu::linear_kernel(isa);
  {
    py::gil_scoped_release release;
    kernel(p);
  }
  return py::str(std::string("cpu/") + fastattn::cpu::isa_name(isa) + "/linear/" +
                 (p.f64 ? "float64" : "float32"));
}

// Row normalisation (fastattn.layer_norm, or unit length) on normalised operands: x (rows, d) with a contiguous last dim, float32 or
// float64; weight and bias None or contiguous (d,) of x's dtype; out C-contiguous (rows, d).
py::str normalize_rows(py::handle x_handle, py::handle weight, py::handle bias,
                       py::handle out_handle, double eps, bool unit_length) {
  const py::array x = as_array(x_handle, "x");
  py::array out = as_array(out_handle, "out");
  const int64_t itemsize = x.itemsize();
  if ((itemsize != 4 && itemsize != 8) || x.dtype().kind() != 'f' || out.dtype().kind() != 'f')
    internal_error("row normalisation computes in float32 or float64");
  check_operand(x, "x", 2, itemsize);
  check_operand(out, "out", 2, itemsize);
  if (!(out.flags() & py::array::c_style) || out.shape(0) != x.shape(0) ||
      out.shape(1) != x.shape(1))
    internal_error("out must be C-contiguous and shaped like x");
  fastattn::LayerNormParams p;
  p.f64 = itemsize == 8;
  p.rows = x.shape(0);
  p.d = x.shape(1);
  p.x = x.data();
  p.x_row_stride = p.rows > 1 ? elem_stride(x, 0, itemsize) : 0;
  p.out = out.mutable_data();
  p.eps = eps;
  p.unit_length = unit_length;
  py::array weight_array, bias_array;
  for (auto [h, a, ptr] : {std::tuple<py::handle, py::array*, const void**>{weight, &weight_array, &p.weight},
                           {bias, &bias_array, &p.bias}}) {
    if (h.is_none()) continue;
    *a = as_array(h, "weight or bias");
    if (a->ndim() != 1 || a->shape(0) != p.d || a->itemsize() != itemsize ||
        a->dtype().kind() != 'f' || !(a->flags() & py::array::c_style))
      internal_error("weight and bias must be contiguous (d,) arrays of x's dtype");
    *ptr = a->data();
  }
  p.num_threads = fastattn::cpu::get_num_threads();
  const fastattn::cpu::Isa isa = fastattn::cpu::chosen_isa();
  const fastattn::cpu::LayerNormKernel kernel = fastattn::cpu::layer_norm_kernel(isa);
  {
    py::gil_scoped_release release;
    kernel(p);
  }
  return py::str(std::string("cpu/") + fastattn::cpu::isa_name(isa) + (unit_length ? "/unit_rows/" : "/layer_norm/") +
                 (p.f64 ? "float64" : "float32"));
}

py::str layer_norm(py::handle x, py::handle weight, py::handle bias, py::handle out, double eps) {
  return normalize_rows(x, weight, bias, out, eps, false);
}

// x / |x| per row (0 for a zero row), for cosine scores; operands as for layer_norm.
py::str unit_rows(py::handle x, py::handle out) {
  return normalize_rows(x, py::none(), py::none(), out, 0.0, true);
}

std::vector<std::string> names(const std::vector<fastattn::cpu::Isa>& isas) {
  std::vector<std::string> out;
  for (auto isa : isas) out.emplace_back(fastattn::cpu::isa_name(isa));
  return out;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "fastattn CPU kernels (scalar, AVX2, AVX-512), chosen at run time";
  m.def("sdpa", &sdpa, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("mask"), py::arg("kv_lengths"), py::arg("dtype_code"), py::arg("scale"),
        py::arg("diag"), py::arg("left"), py::arg("right"), py::arg("q_proj") = py::none(),
        py::arg("q_proj_bias") = py::none(),
        "Fused scaled-dot-product attention on normalised operands; returns the kernel's name. "
        "With q_proj (d, dq) (and q_proj_bias (d,)), queries of width dq are attended with "
        "q_proj q + q_proj_bias. Private: call fastattn.scaled_dot_product_attention or "
        "fastattn.attention.");
  py::class_<SdpaPlan>(m, "SdpaPlan",
                       "A memoised scaled_dot_product_attention call (private: see _sdpa_args).")
      .def(py::init<py::handle, py::handle, py::handle, py::handle, py::handle, int, double,
                    int64_t, int64_t, int64_t, py::tuple, py::handle, py::handle>())
      .def("run", &SdpaPlan::run, py::arg("query"), py::arg("key"), py::arg("value"))
      .def_property_readonly("kernel", &SdpaPlan::kernel);
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("weights"), py::arg("mask"), py::arg("w"), py::arg("score_code"),
        py::arg("act_code"), py::arg("bias"), py::arg("align_code"),
        "The general attention module on normalised operands; returns the kernel's name. "
        "Private: call fastattn.attention.");
  m.def("vector_attention", &vector_attention, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("weights"), py::arg("index"), py::arg("pos"), py::arg("mask"),
        py::arg("mlp"), py::arg("groups"), py::arg("relation_code"), py::arg("sharing_code"),
        "Vector attention on normalised operands; returns the kernel's name. "
        "Private: call fastattn.vector_attention.");
  m.def("knn", &knn, py::arg("points"), py::arg("queries"), py::arg("index"),
        "Exact k nearest neighbours into index (nq, k); returns the kernel's name. Private: call "
        "fastattn.knn.");
  m.def("linear", &linear, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("out"),
        "y = x W^T + b on this library's threads; returns the kernel's name. Private: the general "
        "attention module's score transforms.");
  m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("out"), py::arg("eps"),
        "Layer normalisation of the rows of x on normalised operands; returns the kernel's name. "
        "Private: call fastattn.layer_norm.");
  m.def("unit_rows", &unit_rows, py::arg("x"), py::arg("out"),
        "x / |x| for each row of x (0 for a zero row) on normalised operands; returns the kernel's "
        "name. Private: the cosine score of fastattn.attention.");
  m.def("isa", [] { return std::string(fastattn::cpu::isa_name(fastattn::cpu::chosen_isa())); },
        "The ISA the kernels run on; RuntimeError if FASTATTN_CPU_ISA forces one this CPU lacks.");
  m.def("compiled_isas", [] { return names(fastattn::cpu::compiled_isas()); });
  m.def("available_isas", [] { return names(fastattn::cpu::available_isas()); });
  m.def("get_num_threads", &fastattn::cpu::get_num_threads);
  m.def("set_num_threads", &fastattn::cpu::set_num_threads, py::arg("n"));
  m.attr("MAX_THREADS") = fastattn::cpu::kMaxThreads;
  m.def("build_info", [] {
    py::dict info;
    info["compiler"] = FASTATTN_BUILD_COMPILER;
    info["openmp"] = bool(FASTATTN_BUILD_OPENMP);
    info["compiled_isas"] = FASTATTN_COMPILED_ISAS;
    info["cuda_compiler_found"] = bool(FASTATTN_BUILD_CUDA_COMPILER_FOUND);
    // For bug reports (python -m fastattn info): how this extension was built and what it runs on.
    info["build_type"] = FASTATTN_BUILD_TYPE;
    info["cxx_flags"] = FASTATTN_BUILD_CXX_FLAGS;
    info["sanitize"] = FASTATTN_BUILD_SANITIZE;
    info["openmp_version"] = fastattn::cpu::openmp_version();
    info["openmp_runtime"] = fastattn::cpu::openmp_runtime();
    info["pybind11"] = std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                       std::to_string(PYBIND11_VERSION_MINOR) + "." +
                       std::to_string(PYBIND11_VERSION_PATCH);
    return info;
  });
}
