// The one pybind11 module, rfrt._C: binds the params structs and the launchers, nothing else.
#include <pybind11/pybind11.h>

#include "rfrt/launch.h"
#include "rfrt/rope.h"
#include "rfrt/slots.h"

namespace py = pybind11;
using namespace rfrt;

namespace {
template <typename T>
const T* cptr(uintptr_t a) { return reinterpret_cast<const T*>(a); }
template <typename T>
T* mptr(uintptr_t a) { return reinterpret_cast<T*>(a); }
}  // namespace

// Pointers cross the boundary as integers (tensor.data_ptr()), so the compiled core does not link against
// any particular torch build: one wheel serves every torch version.
#define RFRT_PTR(CLS, NAME, TYPE)                                                                  \
  def_property(                                                                                   \
      #NAME, [](const CLS& p) { return reinterpret_cast<uintptr_t>(p.NAME); },                    \
      [](CLS& p, uintptr_t a) { p.NAME = reinterpret_cast<TYPE>(a); })

PYBIND11_MODULE(_C, m) {
  m.doc() = "rfrt compiled core: ring-buffer KV cache, fused EMA-Sink fold, Wan RoPE, ring attention";
  m.attr("__version__") = RFRT_VERSION;
  m.attr("cuda") = cuda::available();
  m.attr("cuda_architectures") = cuda::architectures();

  py::enum_<DType>(m, "DType").value("F32", DType::F32).value("BF16", DType::BF16).value("F16", DType::F16);
  py::enum_<Device>(m, "Device").value("CPU", Device::CPU).value("CUDA", Device::CUDA);

  py::class_<CacheGeometry>(m, "CacheGeometry")
      .def(py::init<>())
      .def_readwrite("layers", &CacheGeometry::layers)
      .def_readwrite("batch", &CacheGeometry::batch)
      .def_readwrite("heads", &CacheGeometry::heads)
      .def_readwrite("head_dim", &CacheGeometry::head_dim)
      .def_readwrite("window_tokens", &CacheGeometry::window_tokens)
      .def_readwrite("sink_tokens", &CacheGeometry::sink_tokens)
      .def_readwrite("tokens_per_frame", &CacheGeometry::tokens_per_frame)
      .def_readwrite("grid_w", &CacheGeometry::grid_w)
      .def_readwrite("rope_theta", &CacheGeometry::rope_theta);

  py::class_<CacheWriteParams>(m, "CacheWriteParams")
      .def(py::init<>())
      .def_readwrite("g", &CacheWriteParams::g)
      .RFRT_PTR(CacheWriteParams, kv, void*)
      .RFRT_PTR(CacheWriteParams, sink_acc, void*)
      .RFRT_PTR(CacheWriteParams, q, const void*)
      .RFRT_PTR(CacheWriteParams, q_out, void*)
      .RFRT_PTR(CacheWriteParams, k, const void*)
      .RFRT_PTR(CacheWriteParams, v, const void*)
      .RFRT_PTR(CacheWriteParams, cursor, const int64_t*)
      .RFRT_PTR(CacheWriteParams, rope_space, const float*)
      .RFRT_PTR(CacheWriteParams, rope_time, const float*)
      .RFRT_PTR(CacheWriteParams, error, int32_t*)
      .def_readwrite("layer", &CacheWriteParams::layer)
      .def_readwrite("chunk_tokens", &CacheWriteParams::chunk_tokens)
      .def_readwrite("cache_dtype", &CacheWriteParams::cache_dtype)
      .def_readwrite("acc_dtype", &CacheWriteParams::acc_dtype)
      .def_readwrite("device", &CacheWriteParams::device)
      .def_readwrite("device_index", &CacheWriteParams::device_index)
      .def_readwrite("stream", &CacheWriteParams::stream);

  py::class_<RopeTimeParams>(m, "RopeTimeParams")
      .def(py::init<>())
      .RFRT_PTR(RopeTimeParams, rope_time, float*)
      .RFRT_PTR(RopeTimeParams, write_cursor, const int64_t*)
      .RFRT_PTR(RopeTimeParams, fold_cursor, const int64_t*)
      .def_readwrite("write_frames", &RopeTimeParams::write_frames)
      .def_readwrite("sink_frames", &RopeTimeParams::sink_frames)
      .def_readwrite("head_dim", &RopeTimeParams::head_dim)
      .def_readwrite("rope_theta", &RopeTimeParams::rope_theta)
      .def_readwrite("device", &RopeTimeParams::device)
      .def_readwrite("device_index", &RopeTimeParams::device_index)
      .def_readwrite("stream", &RopeTimeParams::stream);

  py::class_<SinkFoldParams>(m, "SinkFoldParams")
      .def(py::init<>())
      .def_readwrite("g", &SinkFoldParams::g)
      .RFRT_PTR(SinkFoldParams, kv, void*)
      .RFRT_PTR(SinkFoldParams, sink_acc, void*)
      .RFRT_PTR(SinkFoldParams, cursor, const int64_t*)
      .RFRT_PTR(SinkFoldParams, rope_space, const float*)
      .RFRT_PTR(SinkFoldParams, rope_time, const float*)
      .RFRT_PTR(SinkFoldParams, error, int32_t*)
      .def_readwrite("write_frames", &SinkFoldParams::write_frames)
      .def_readwrite("alpha", &SinkFoldParams::alpha)
      .def_readwrite("cache_dtype", &SinkFoldParams::cache_dtype)
      .def_readwrite("acc_dtype", &SinkFoldParams::acc_dtype)
      .def_readwrite("device", &SinkFoldParams::device)
      .def_readwrite("device_index", &SinkFoldParams::device_index)
      .def_readwrite("stream", &SinkFoldParams::stream);

  py::class_<RopeApplyParams>(m, "RopeApplyParams")
      .def(py::init<>())
      .RFRT_PTR(RopeApplyParams, x, const void*)
      .RFRT_PTR(RopeApplyParams, out, void*)
      .RFRT_PTR(RopeApplyParams, cursor, const int64_t*)
      .def_readwrite("batch", &RopeApplyParams::batch)
      .def_readwrite("tokens", &RopeApplyParams::tokens)
      .def_readwrite("heads", &RopeApplyParams::heads)
      .def_readwrite("head_dim", &RopeApplyParams::head_dim)
      .def_readwrite("tokens_per_frame", &RopeApplyParams::tokens_per_frame)
      .def_readwrite("grid_w", &RopeApplyParams::grid_w)
      .def_readwrite("rope_theta", &RopeApplyParams::rope_theta)
      .def_readwrite("dtype", &RopeApplyParams::dtype)
      .def_readwrite("device", &RopeApplyParams::device)
      .def_readwrite("device_index", &RopeApplyParams::device_index)
      .def_readwrite("stream", &RopeApplyParams::stream);

  py::class_<RingAttentionParams>(m, "RingAttentionParams")
      .def(py::init<>())
      .def_readwrite("g", &RingAttentionParams::g)
      .RFRT_PTR(RingAttentionParams, kv, const void*)
      .RFRT_PTR(RingAttentionParams, q, const void*)
      .RFRT_PTR(RingAttentionParams, out, void*)
      .def_readwrite("layer", &RingAttentionParams::layer)
      .def_readwrite("q_tokens", &RingAttentionParams::q_tokens)
      .def_readwrite("keys", &RingAttentionParams::keys)
      .def_readwrite("scale", &RingAttentionParams::scale)
      .def_readwrite("dtype", &RingAttentionParams::dtype)
      .def_readwrite("device", &RingAttentionParams::device)
      .def_readwrite("device_index", &RingAttentionParams::device_index)
      .def_readwrite("stream", &RingAttentionParams::stream);

  m.def("slot_frame", &slot_frame, py::arg("frame"), py::arg("sink_frames"), py::arg("window_frames"),
        "Physical frame slot of a logical frame (mirrors CachePolicy.slot_frame).");

  m.def(
      "rope_space_table",
      [](int32_t tokens_per_frame, int32_t grid_w, int32_t head_dim, double theta, uintptr_t out) {
        rope_space_table(tokens_per_frame, grid_w, head_dim, theta, reinterpret_cast<float*>(out));
      },
      py::arg("tokens_per_frame"), py::arg("grid_w"), py::arg("head_dim"), py::arg("theta"), py::arg("out"),
      "Fill a host float32 [tokens_per_frame, h+w pairs, 2] buffer with the (cos, sin) of every h/w pair.");
  m.attr("ERR_WRITE_CURSOR") = static_cast<int32_t>(RFRT_ERR_WRITE_CURSOR);
  m.attr("ERR_FOLD_CURSOR") = static_cast<int32_t>(RFRT_ERR_FOLD_CURSOR);

  // The GIL is released: kernels never touch Python objects, and a CPU call may run for a while.
  m.def("cache_write", &cache_write, py::call_guard<py::gil_scoped_release>());
  m.def("sink_fold", &sink_fold, py::call_guard<py::gil_scoped_release>());
  m.def("rope_apply", &rope_apply, py::call_guard<py::gil_scoped_release>());
  m.def("rope_time_rows", &rope_time_rows, py::call_guard<py::gil_scoped_release>());
  m.def("ring_attention", &ring_attention, py::call_guard<py::gil_scoped_release>());
}
