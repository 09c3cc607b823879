// oneDNN 3D convolutions as XLA FFI calls: forward, backward-data and backward-weights of a
// float32 convolution with channels-last activations (NDHWC) and DHWIO kernels, the layouts
// the project's models use. Built on first use by onednn_conv.py (g++ against the
// onednn-cpu-gomp wheel's library and headers); why: XLA:CPU's own 3D convolutions run at
// 30-70 GFLOP/s on the early, few-channel U-Net layers where oneDNN's JIT kernels (what PyTorch
// uses) run at about 3x that (benchmarks/cpu_conv.md).
//
// Activations stay in the caller's NDHWC buffers (oneDNN has native kernels for that layout);
// kernels are reordered to and from the layout oneDNN prefers on every call (a kernel is small
// next to an activation). Primitives are built once per shape and cached: building one JITs
// machine code, which costs milliseconds.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::memory;
using Dims = memory::dims;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Geometry of one convolution, in oneDNN's logical (N, C, D, H, W) order.
// `threads` is part of it because oneDNN splits the work when a primitive is built.
struct Geometry {
  Dims src, weights, dst, strides, pad_l, pad_r;
  int threads;
  bool operator<(const Geometry& o) const {
    return std::tie(src, weights, dst, strides, pad_l, pad_r, threads) <
           std::tie(o.src, o.weights, o.dst, o.strides, o.pad_l, o.pad_r, o.threads);
  }
};

Dims Ncdhw(ffi::Span<const int64_t> ndhwc) {
  return {ndhwc[0], ndhwc[4], ndhwc[1], ndhwc[2], ndhwc[3]};
}

Dims Oidhw(ffi::Span<const int64_t> dhwio) {
  return {dhwio[4], dhwio[3], dhwio[0], dhwio[1], dhwio[2]};
}

Dims ToDims(ffi::Span<const int64_t> s) { return Dims(s.begin(), s.end()); }

memory::desc Activation(const Dims& d) {
  return memory::desc(d, memory::data_type::f32, memory::format_tag::ndhwc);
}
memory::desc UserKernel(const Dims& d) {
  return memory::desc(d, memory::data_type::f32, memory::format_tag::dhwio);
}
memory::desc AnyKernel(const Dims& d) {
  return memory::desc(d, memory::data_type::f32, memory::format_tag::any);
}

// The caller provides each execution's scratchpad: XLA runs one primitive on several threads at
// once (one per device of a sharded program), and the library-managed scratchpad is shared by
// those executions (oneDNN's gemm-based backward-weights kernel then writes past it: a crash).
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      Activation(g.src), AnyKernel(g.weights), Activation(g.dst), g.strides, g.pad_l, g.pad_r,
      UserScratchpad());
}

// One cached set of primitives per geometry and direction.
struct Plan {
  dnnl::primitive conv;
  memory::desc kernel_desc;       // the kernel layout the primitive wants
  memory::desc scratchpad_desc;
  dnnl::reorder kernel_reorder;   // user DHWIO <-> kernel_desc (direction depends on the plan)
  bool kernel_is_user_layout;
};

enum class Kind { kForward, kBackwardData, kBackwardWeights };

Plan MakePlan(Kind kind, const Geometry& g) {
  auto fwd = ForwardDesc(g);
  Plan plan;
  if (kind == Kind::kForward) {
    plan.conv = dnnl::convolution_forward(fwd);
    plan.kernel_desc = fwd.weights_desc();
    plan.scratchpad_desc = fwd.scratchpad_desc();
  } else if (kind == Kind::kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, Activation(g.src), AnyKernel(g.weights),
        Activation(g.dst), g.strides, g.pad_l, g.pad_r, fwd, UserScratchpad());
    plan.conv = dnnl::convolution_backward_data(pd);
    plan.kernel_desc = pd.weights_desc();
    plan.scratchpad_desc = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, Activation(g.src), AnyKernel(g.weights),
        Activation(g.dst), g.strides, g.pad_l, g.pad_r, fwd, UserScratchpad());
    plan.conv = dnnl::convolution_backward_weights(pd);
    plan.kernel_desc = pd.diff_weights_desc();
    plan.scratchpad_desc = pd.scratchpad_desc();
  }
  auto user = UserKernel(g.weights);
  plan.kernel_is_user_layout = plan.kernel_desc == user;
  if (!plan.kernel_is_user_layout) {
    plan.kernel_reorder = kind == Kind::kBackwardWeights
        ? dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), plan.kernel_desc, Engine(), user))
        : dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user, Engine(), plan.kernel_desc));
  }
  return plan;
}

const Plan& GetPlan(Kind kind, const Geometry& g) {
  static std::mutex mu;
  static std::map<std::pair<int, Geometry>, std::unique_ptr<Plan>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{static_cast<int>(kind), g}];
  if (!slot) slot = std::make_unique<Plan>(MakePlan(kind, g));
  return *slot;
}

Geometry MakeGeometry(ffi::Span<const int64_t> src_ndhwc, ffi::Span<const int64_t> kernel_dhwio,
                      ffi::Span<const int64_t> dst_ndhwc, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> pad_l, ffi::Span<const int64_t> pad_r) {
  return Geometry{Ncdhw(src_ndhwc), Oidhw(kernel_dhwio), Ncdhw(dst_ndhwc),
                  ToDims(strides), ToDims(pad_l), ToDims(pad_r), omp_get_max_threads()};
}

// Runs `plan` with the activations given and the kernel in the user's DHWIO buffer.
void Run(Kind kind, const Plan& plan, const Geometry& g, void* src, void* kernel, void* dst) {
  auto& eng = Engine();
  dnnl::stream stream(eng);
  memory user_kernel(UserKernel(g.weights), eng, kernel);
  memory kernel_mem = plan.kernel_is_user_layout ? user_kernel : memory(plan.kernel_desc, eng);
  if (kind != Kind::kBackwardWeights && !plan.kernel_is_user_layout) {
    plan.kernel_reorder.execute(stream, user_kernel, kernel_mem);
  }
  memory src_mem(Activation(g.src), eng, src), dst_mem(Activation(g.dst), eng, dst);
  memory scratchpad(plan.scratchpad_desc, eng);  // this execution's own
  if (kind == Kind::kForward) {
    plan.conv.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_WEIGHTS, kernel_mem},
                               {DNNL_ARG_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else if (kind == Kind::kBackwardData) {
    plan.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, src_mem}, {DNNL_ARG_WEIGHTS, kernel_mem},
                               {DNNL_ARG_DIFF_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else {
    plan.conv.execute(stream, {{DNNL_ARG_SRC, src_mem}, {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                               {DNNL_ARG_DIFF_DST, dst_mem}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    if (!plan.kernel_is_user_layout) plan.kernel_reorder.execute(stream, kernel_mem, user_kernel);
  }
  stream.wait();
}

// `threads` > 0 caps this call's OpenMP team (the setting is per calling thread, restored after):
// a program partitioned over several devices of one CPU runs one call per device at once, and
// one team per device of all the cores each oversubscribes the CPU (spinning teams then starve
// each other; seen as a 40 s collective timeout with 8 fake devices on 2 cores).
template <Kind kind>
ffi::Error Conv(ffi::Span<const int64_t> src_shape, ffi::Span<const int64_t> kernel_shape,
                ffi::Span<const int64_t> dst_shape, ffi::Span<const int64_t> strides,
                ffi::Span<const int64_t> pad_l, ffi::Span<const int64_t> pad_r, int64_t threads,
                void* src, void* kernel, void* dst) {
  const int saved = omp_get_max_threads();
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  ffi::Error result = ffi::Error::Success();
  try {
    Geometry g = MakeGeometry(src_shape, kernel_shape, dst_shape, strides, pad_l, pad_r);
    Run(kind, GetPlan(kind, g), g, src, kernel, dst);
  } catch (const dnnl::error& e) {
    result = ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  omp_set_num_threads(saved);
  return result;
}

using F32 = ffi::Buffer<ffi::F32>;
using Ints = ffi::Span<const int64_t>;

ffi::Error Forward(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, Ints strides, Ints pad_l,
                   Ints pad_r, int64_t threads) {
  return Conv<Kind::kForward>(x.dimensions(), w.dimensions(), y->dimensions(), strides, pad_l,
                              pad_r, threads, x.untyped_data(), w.untyped_data(),
                              y->untyped_data());
}

ffi::Error BackwardData(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, Ints strides,
                        Ints pad_l, Ints pad_r, int64_t threads) {
  return Conv<Kind::kBackwardData>(dx->dimensions(), w.dimensions(), dy.dimensions(), strides,
                                   pad_l, pad_r, threads, dx->untyped_data(), w.untyped_data(),
                                   dy.untyped_data());
}

ffi::Error BackwardWeights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, Ints strides,
                           Ints pad_l, Ints pad_r, int64_t threads) {
  return Conv<Kind::kBackwardWeights>(x.dimensions(), dw->dimensions(), dy.dimensions(), strides,
                                      pad_l, pad_r, threads, x.untyped_data(), dw->untyped_data(),
                                      dy.untyped_data());
}

}  // namespace

// All three take two float32 buffers and return one, with the convolution's strides and
// paddings (one per spatial axis) and the OpenMP team cap (0: none) as attributes.
#define CONV_BINDING                                                                        \
  ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<Ints>("strides")                  \
      .Attr<Ints>("pad_l").Attr<Ints>("pad_r").Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DassembleConv3dForward, Forward, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DassembleConv3dBackwardData, BackwardData, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(DassembleConv3dBackwardWeights, BackwardWeights, CONV_BINDING);
