// fastattn._cuda: the CUDA backend's Python entry points. The Python layer (fastattn/_cuda_arrays.py
// with fastattn/_sdpa_args.py) has checked shapes, dtypes and options and describes every operand by
// its device pointer and element strides; this file fills the kernel struct, checks what memory
// safety needs, and launches on the caller's stream with the GIL released.
//
// The CUDA runtime is linked statically, so this module imports on machines without a driver or
// GPU; the first runtime call there fails, and device_count() reports why.
#include <cuda_runtime.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/cuda_params.h"

namespace py = pybind11;
namespace fc = fastattn::cuda;

namespace {

// A CUDA error as a Python exception: MemoryError for an allocation failure, else RuntimeError,
// both with CUDA's own name and description of the error.
[[noreturn]] void raise_cuda(cudaError_t err, const std::string& what) {
  const std::string msg = what + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  PyErr_SetString(err == cudaErrorMemoryAllocation ? PyExc_MemoryError : PyExc_RuntimeError,
                  msg.c_str());
  throw py::error_already_set();
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) raise_cuda(err, what);
}

[[noreturn]] void internal_error(const std::string& what) {
  throw py::value_error("fastattn._cuda: " + what + " (the Python layer should have caught this)");
}

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
    device_ = device;
  }
  ~DeviceGuard() {
    if (device_ != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0, device_ = 0;
};

// (count, None) or (0, reason): never raises, so backends() can always answer.
py::tuple device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it: a missing driver is a state, not a pending error
    return py::make_tuple(0, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
  }
  return py::make_tuple(n, py::none());
}

py::dict device_info(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  py::dict d;
  d["index"] = device;
  d["name"] = std::string(prop.name);
  d["compute_capability"] = py::make_tuple(prop.major, prop.minor);
  d["multiprocessors"] = prop.multiProcessorCount;
  d["memory_bytes"] = py::int_(size_t(prop.totalGlobalMem));
  d["l2_cache_bytes"] = prop.l2CacheSize;
  return d;
}

int64_t as_i64(py::handle h) { return h.cast<int64_t>(); }

void fill_batch_strides(fc::BatchStrides& bs, py::handle strides, int nbatch, const char* name) {
  const py::sequence seq = py::reinterpret_borrow<py::sequence>(strides);
  if (int(seq.size()) != nbatch) internal_error(std::string(name) + " has the wrong batch strides");
  for (int i = 0; i < nbatch; ++i) bs.s[i] = as_i64(seq[size_t(i)]);
}

int64_t itemsize_of(fastattn::DType d) {
  return d == fastattn::DType::f64 ? 8 : d == fastattn::DType::f32 ? 4 : 2;
}

// An operand (ptr, batch strides, head stride, row stride) into the params; returns the pointer.
uintptr_t operand(py::handle desc, int nbatch, fc::BatchStrides& bs, int64_t& head, int64_t& row,
                  const char* name) {
  const py::tuple t = py::reinterpret_borrow<py::tuple>(desc);
  if (t.size() != 4) internal_error(std::string(name) + " descriptor must have 4 fields");
  fill_batch_strides(bs, t[1], nbatch, name);
  head = as_i64(t[2]);
  row = as_i64(t[3]);
  return t[0].cast<uintptr_t>();
}

// Launches scaled-dot-product attention; see _cuda_arrays.sdpa for the descriptors.
std::string sdpa(int dtype_code, std::vector<int64_t> batch_shape, int64_t hq, int64_t hkv,
                 int64_t lq, int64_t lk, int64_t d, int64_t dv, py::tuple q, py::tuple k,
                 py::tuple v, uintptr_t out, uintptr_t lse, py::object mask, py::object kv_lengths,
                 double scale, int64_t diag, int64_t left, int64_t right, bool tf32, int device,
                 uintptr_t stream) {
  if (dtype_code < 0 || dtype_code > 3) internal_error("unknown dtype code");
  if (batch_shape.size() > size_t(fc::kMaxBatchDims)) internal_error("too many batch dims");
  if (hkv <= 0 || hq % hkv != 0) internal_error("query heads must be a multiple of kv heads");
  if (d > fc::kMaxHeadDim || dv > fc::kMaxHeadDim) internal_error("head dim too large");
  fc::SdpaParams p;
  p.dtype = static_cast<fastattn::DType>(dtype_code);
  p.tf32 = tf32;
  p.nbatch = int(batch_shape.size());
  p.batch = 1;
  for (int i = 0; i < p.nbatch; ++i) {
    p.batch_shape[i] = batch_shape[size_t(i)];
    p.batch *= batch_shape[size_t(i)];
  }
  p.hq = hq;
  p.hkv = hkv;
  p.lq = lq;
  p.lk = lk;
  p.d = d;
  p.dv = dv;
  const uintptr_t qp = operand(q, p.nbatch, p.q_bs, p.q_head_stride, p.q_row_stride, "query");
  const uintptr_t kp = operand(k, p.nbatch, p.k_bs, p.k_head_stride, p.k_row_stride, "key");
  const uintptr_t vp = operand(v, p.nbatch, p.v_bs, p.v_head_stride, p.v_row_stride, "value");
  p.q = reinterpret_cast<const void*>(qp);
  p.k = reinterpret_cast<const void*>(kp);
  p.v = reinterpret_cast<const void*>(vp);
  p.out = reinterpret_cast<void*>(out);
  p.lse = lse ? reinterpret_cast<void*>(lse) : nullptr;

  // 16-byte loads need every row of q, k, v to start on a 16-byte boundary.
  const int64_t item = itemsize_of(p.dtype);
  bool vec = qp % 16 == 0 && kp % 16 == 0 && vp % 16 == 0 && (d * item) % 16 == 0 &&
             (dv * item) % 16 == 0;
  for (int64_t s : {p.q_head_stride, p.q_row_stride, p.k_head_stride, p.k_row_stride,
                    p.v_head_stride, p.v_row_stride})
    vec = vec && (s * item) % 16 == 0;
  for (int i = 0; i < p.nbatch; ++i)
    vec = vec && (p.q_bs.s[i] * item) % 16 == 0 && (p.k_bs.s[i] * item) % 16 == 0 &&
          (p.v_bs.s[i] * item) % 16 == 0;
  p.vec16 = vec;

  if (!mask.is_none()) {
    const py::tuple t = mask.cast<py::tuple>();
    if (t.size() != 6) internal_error("mask descriptor must have 6 fields");
    const int type = t[0].cast<int>();
    if (type < 1 || type > 5) internal_error("unknown mask type");
    p.mask_type = static_cast<fc::MaskType>(type);
    p.mask = reinterpret_cast<const void*>(t[1].cast<uintptr_t>());
    fill_batch_strides(p.mask_bs, t[2], p.nbatch, "mask");
    p.mask_head_stride = as_i64(t[3]);
    p.mask_row_stride = as_i64(t[4]);
    p.mask_col_stride = as_i64(t[5]);
  }
  if (!kv_lengths.is_none()) {
    const py::tuple t = kv_lengths.cast<py::tuple>();
    if (t.size() != 2) internal_error("kv_lengths descriptor must have 2 fields");
    p.kv_lengths = reinterpret_cast<const int64_t*>(t[0].cast<uintptr_t>());
    fill_batch_strides(p.len_bs, t[1], p.nbatch, "kv_lengths");
  }
  p.scale = scale;
  p.diag = diag;
  p.left = left < 0 ? fastattn::kUnbounded : left;
  p.right = right < 0 ? fastattn::kUnbounded : right;

  const char* kernel = "";
  int err = 0;
  {
    py::gil_scoped_release release;
    DeviceGuard guard(device);
    err = fc::sdpa_forward(p, reinterpret_cast<void*>(stream), &kernel);
  }
  if (err) raise_cuda(static_cast<cudaError_t>(err), std::string("fastattn CUDA kernel ") + kernel);
  return kernel;
}

// Launches vector attention; see _cuda_vector.py for the descriptors. Operands are float32 or
// float64 (f64), channels contiguous.
std::string vector_attention(bool f64, std::vector<int64_t> batch_shape, int64_t lq, int64_t lk,
                             int64_t c, int64_t groups, int64_t hidden, int64_t key_rows,
                             py::tuple q, py::tuple k, py::tuple v, uintptr_t index, py::object pos,
                             py::object mask, int relation, int sharing, py::object mlp,
                             uintptr_t out, uintptr_t weights, int device, uintptr_t stream) {
  if (batch_shape.size() > size_t(fc::kMaxBatchDims)) internal_error("too many batch dims");
  if (groups < 1 || c % groups != 0) internal_error("groups must divide the channels");
  if (relation < 0 || relation > 2 || sharing < 0 || sharing > 1)
    internal_error("unknown relation or sharing code");
  fc::VectorParams p;
  p.f64 = f64;
  p.nbatch = int(batch_shape.size());
  p.batch = 1;
  for (int i = 0; i < p.nbatch; ++i) {
    p.batch_shape[i] = batch_shape[size_t(i)];
    p.batch *= batch_shape[size_t(i)];
  }
  p.lq = lq;
  p.lk = lk;
  p.c = c;
  p.groups = groups;
  p.hidden = mlp.is_none() ? 0 : hidden;
  p.key_rows = key_rows;
  int64_t unused = 0;
  p.q = reinterpret_cast<const void*>(operand(q, p.nbatch, p.q_bs, unused, p.q_row_stride, "query"));
  p.k = reinterpret_cast<const void*>(operand(k, p.nbatch, p.k_bs, unused, p.k_row_stride, "key"));
  p.v = reinterpret_cast<const void*>(operand(v, p.nbatch, p.v_bs, unused, p.v_row_stride, "value"));
  p.index = index ? reinterpret_cast<const int64_t*>(index) : nullptr;
  if (!pos.is_none())
    p.pos = reinterpret_cast<const void*>(
        operand(pos, p.nbatch, p.pos_bs, p.pos_row_stride, p.pos_col_stride, "pos"));
  if (!mask.is_none()) {
    const py::tuple t = mask.cast<py::tuple>();
    if (t.size() != 5) internal_error("mask descriptor must have 5 fields");
    const int type = t[0].cast<int>();
    if (type != int(fc::MaskType::boolean) &&
        type != int(f64 ? fc::MaskType::f64 : fc::MaskType::f32))
      internal_error("vector attention masks are bool or in the compute type");
    p.mask_type = static_cast<fc::MaskType>(type);
    p.mask = reinterpret_cast<const void*>(t[1].cast<uintptr_t>());
    fill_batch_strides(p.mask_bs, t[2], p.nbatch, "mask");
    p.mask_row_stride = as_i64(t[3]);
    p.mask_col_stride = as_i64(t[4]);
  }
  if (!mlp.is_none()) {
    const py::tuple t = mlp.cast<py::tuple>();
    if (t.size() != 4) internal_error("weight_mlp descriptor must have 4 pointers");
    p.w1 = reinterpret_cast<const void*>(t[0].cast<uintptr_t>());
    p.b1 = reinterpret_cast<const void*>(t[1].cast<uintptr_t>());
    p.w2 = reinterpret_cast<const void*>(t[2].cast<uintptr_t>());
    p.b2 = reinterpret_cast<const void*>(t[3].cast<uintptr_t>());
  }
  p.relation = relation;
  p.sharing = sharing;
  p.out = reinterpret_cast<void*>(out);
  p.weights = weights ? reinterpret_cast<void*>(weights) : nullptr;
  if (fc::vector_row_bytes(p) > fc::kVectorMaxRowBytes)
    internal_error("too many channels, groups or hidden units for the CUDA kernel");

  const char* kernel = "";
  int err = 0;
  {
    py::gil_scoped_release release;
    DeviceGuard guard(device);
    err = fc::vector_attention_forward(p, reinterpret_cast<void*>(stream), &kernel);
  }
  if (err) raise_cuda(static_cast<cudaError_t>(err), std::string("fastattn CUDA kernel ") + kernel);
  return kernel;
}

// Device memory owned by Python (NumPy callers' operands): freed when the object goes.
class DeviceBuffer {
 public:
  DeviceBuffer(size_t bytes, int device) : device_(device), bytes_(bytes) {
    DeviceGuard guard(device);
    if (bytes) check(cudaMalloc(&ptr_, bytes), "cudaMalloc");
  }
  ~DeviceBuffer() {
    if (ptr_) {
      int previous = 0;
      cudaGetDevice(&previous);
      cudaSetDevice(device_);
      cudaFree(ptr_);
      cudaSetDevice(previous);
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(ptr_); }
  size_t bytes() const { return bytes_; }

  // Copies a C-contiguous host array in (ordered on `stream`; returns once the host side is read).
  void upload(py::array a, uintptr_t stream) {
    if (!(a.flags() & py::array::c_style)) internal_error("upload needs a C-contiguous array");
    if (size_t(a.nbytes()) > bytes_) internal_error("upload larger than the buffer");
    DeviceGuard guard(device_);
    if (a.nbytes())
      check(cudaMemcpyAsync(ptr_, a.data(), size_t(a.nbytes()), cudaMemcpyHostToDevice,
                            reinterpret_cast<cudaStream_t>(stream)),
            "cudaMemcpyAsync (host to device)");
  }
  // Copies into a C-contiguous writeable host array after the stream's work, and waits for it.
  void download(py::array a, uintptr_t stream) {
    if (!(a.flags() & py::array::c_style) || !a.writeable())
      internal_error("download needs a C-contiguous writeable array");
    if (size_t(a.nbytes()) > bytes_) internal_error("download larger than the buffer");
    DeviceGuard guard(device_);
    py::gil_scoped_release release;
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    if (a.nbytes())
      check(cudaMemcpyAsync(a.mutable_data(), ptr_, size_t(a.nbytes()), cudaMemcpyDeviceToHost, s),
            "cudaMemcpyAsync (device to host)");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  }

 private:
  void* ptr_ = nullptr;
  int device_ = 0;
  size_t bytes_ = 0;
};

void synchronize(int device, uintptr_t stream) {
  DeviceGuard guard(device);
  py::gil_scoped_release release;
  check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

// Copies `bytes` bytes device to host into a C-contiguous array after `stream`'s work (small
// operands the checks must read, such as kv_lengths given on the GPU).
void copy_to_host(uintptr_t src, py::array dst, int device, uintptr_t stream) {
  if (!(dst.flags() & py::array::c_style) || !dst.writeable()) internal_error("bad host array");
  DeviceGuard guard(device);
  py::gil_scoped_release release;
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (dst.nbytes())
    check(cudaMemcpyAsync(dst.mutable_data(), reinterpret_cast<const void*>(src),
                          size_t(dst.nbytes()), cudaMemcpyDeviceToHost, s),
          "cudaMemcpyAsync (device to host)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastattn CUDA kernels (private: use fastattn's public functions)";
  m.def("device_count", &device_count,
        "(number of CUDA devices, None), or (0, the CUDA runtime's reason) when there is none.");
  m.def("device_info", &device_info, py::arg("device"));
  m.def("sdpa", &sdpa, py::arg("dtype_code"), py::arg("batch_shape"), py::arg("hq"),
        py::arg("hkv"), py::arg("lq"), py::arg("lk"), py::arg("d"), py::arg("dv"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("mask"),
        py::arg("kv_lengths"), py::arg("scale"), py::arg("diag"), py::arg("left"),
        py::arg("right"), py::arg("tf32"), py::arg("device"), py::arg("stream"),
        "Launches fused SDPA on described device operands; returns the kernel's name.");
  m.def("vector_attention", &vector_attention, py::arg("f64"), py::arg("batch_shape"),
        py::arg("lq"), py::arg("lk"), py::arg("c"), py::arg("groups"), py::arg("hidden"),
        py::arg("key_rows"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("index"),
        py::arg("pos"), py::arg("mask"), py::arg("relation"), py::arg("sharing"), py::arg("mlp"),
        py::arg("out"), py::arg("weights"), py::arg("device"), py::arg("stream"),
        "Launches vector attention on described device operands; returns the kernel's name.");
  m.def("vector_max_row_bytes", [] { return fc::kVectorMaxRowBytes; });
  py::class_<DeviceBuffer>(m, "DeviceBuffer", "Device memory for NumPy callers' operands.")
      .def(py::init<size_t, int>(), py::arg("bytes"), py::arg("device"))
      .def_property_readonly("ptr", &DeviceBuffer::ptr)
      .def_property_readonly("bytes", &DeviceBuffer::bytes)
      .def("upload", &DeviceBuffer::upload, py::arg("array"), py::arg("stream"))
      .def("download", &DeviceBuffer::download, py::arg("array"), py::arg("stream"));
  m.def("synchronize", &synchronize, py::arg("device"), py::arg("stream"));
  m.def("copy_to_host", &copy_to_host, py::arg("src"), py::arg("dst"), py::arg("device"),
        py::arg("stream"));
  m.def("build_info", [] {
    py::dict info;
    info["architectures"] = std::string(FASTATTN_CUDA_ARCHS);
    info["nvcc"] = std::string(FASTATTN_NVCC_VERSION);
    info["cudart"] = CUDART_VERSION;
    info["max_head_dim"] = fc::kMaxHeadDim;
    int driver = 0;
    info["driver"] = cudaDriverGetVersion(&driver) == cudaSuccess ? driver : 0;
    return info;
  });
}
