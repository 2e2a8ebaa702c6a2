// CUDA kernels of multi-scale deformable attention.
//
// Compared with the original Deformable-DETR kernel (one thread per channel, scalar loads,
// shared-memory reductions and atomics for every gradient element):
//  - each thread owns kVec consecutive channels of one (batch, query, head) and reads them with
//    one aligned vector load per corner (16 bytes for fp32 and half types);
//  - the sampling position and bilinear weights of a point are computed once per thread for all
//    its channels, in fp32 (fp64 for double) whatever the storage type;
//  - in the backward pass the D / kVec threads of one (batch, query, head) sit in adjacent lanes
//    of a warp, so the location and weight gradients are summed with warp shuffles and written
//    once, without atomics; only grad_value (shared between queries) needs atomics;
//  - half types accumulate in fp32 (grad_value in an fp32 buffer, converted once at the end);
//  - all index arithmetic is int64; kernels run on the current stream; any batch size works.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "ms_deform_attn_checks.h"

namespace msda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <typename scalar_t, int kVec>
__device__ __forceinline__ void load_pack(const scalar_t* ptr, at::opmath_type<scalar_t> (&out)[kVec]) {
  const Pack<scalar_t, kVec> pack = *reinterpret_cast<const Pack<scalar_t, kVec>*>(ptr);
#pragma unroll
  for (int j = 0; j < kVec; ++j) out[j] = static_cast<at::opmath_type<scalar_t>>(pack.v[j]);
}

// The four bilinear corners of one point: positions (-1 when outside) and weights (0 when outside).
// NaN in, NaN out, as grid_sample and the CPU kernels: a NaN or infinite coordinate places no corner
// on the map, but its fractional offset and hence its four bilinear weights are NaN, so the output
// row and the weight's and the other coordinate's gradients are NaN; grad_value gets nothing.
template <typename opmath_t>
struct Corners {
  int64_t pos[4];
  opmath_t bw[4];
  opmath_t lx, ly;
};

template <typename opmath_t>
__device__ __forceinline__ Corners<opmath_t> bilinear_corners(opmath_t x_norm, opmath_t y_norm, int64_t height,
                                                                int64_t width, int64_t start, int64_t spatial) {
  Corners<opmath_t> c;
  const opmath_t w = static_cast<opmath_t>(width), h = static_cast<opmath_t>(height);
  opmath_t x = x_norm * w - opmath_t(0.5);
  opmath_t y = y_norm * h - opmath_t(0.5);
  const opmath_t nan_x = x - x, nan_y = y - y;  // 0, or NaN for a non-finite coordinate
  // NaN fails every comparison, so NaN and far-away points count as outside.
  const bool inside = (x > opmath_t(-1)) & (y > opmath_t(-1)) & (x < w) & (y < h);
  x = inside ? x : opmath_t(-1);
  y = inside ? y : opmath_t(-1);
  const opmath_t fx = floor(x), fy = floor(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  c.lx = x - fx + nan_x;
  c.ly = y - fy + nan_y;
  const opmath_t bx = opmath_t(1) - c.lx, by = opmath_t(1) - c.ly;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const opmath_t bws[4] = {by * bx, by * c.lx, c.ly * bx, c.ly * c.lx};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t pos = start + ys[k] * width + xs[k];
    // pos < spatial guards direct op calls with inconsistent shapes against out-of-bounds reads
    const bool valid = inside && xs[k] >= 0 && xs[k] < width && ys[k] >= 0 && ys[k] < height && pos < spatial;
    c.pos[k] = valid ? pos : -1;
    c.bw[k] = valid ? bws[k] : bws[k] * opmath_t(0);  // 0 off the map; NaN stays NaN
  }
  return c;
}

struct Sizes {
  int64_t batch, spatial, heads, channels, queries, levels, points;
};

template <typename scalar_t, int kVec>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ starts, const scalar_t* __restrict__ locations,
                               const scalar_t* __restrict__ weights, scalar_t* __restrict__ output, Sizes s,
                               int64_t total) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t groups = s.channels / kVec;
  const int64_t ch0 = (idx % groups) * kVec;
  const int64_t bqm = idx / groups;  // (b * Q + q) * M + m
  const int64_t m = bqm % s.heads;
  const int64_t b = bqm / (s.heads * s.queries);
  const int64_t row_stride = s.heads * s.channels;
  const scalar_t* head_value = value + b * s.spatial * row_stride + m * s.channels + ch0;
  opmath_t acc[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) acc[j] = opmath_t(0);
  // Sum of the weights of corners off the map, which read zeros: 0, or NaN from a non-finite
  // location (or weight), added to the output times zero as the CPU kernels' zero rows do.
  opmath_t off_map = opmath_t(0);
  int64_t i = bqm * s.levels * s.points;
  for (int64_t l = 0; l < s.levels; ++l) {
    const int64_t height = shapes[2 * l], width = shapes[2 * l + 1], start = starts[l];
    for (int64_t p = 0; p < s.points; ++p, ++i) {
      const Corners<opmath_t> c = bilinear_corners<opmath_t>(static_cast<opmath_t>(locations[2 * i]),
                                                             static_cast<opmath_t>(locations[2 * i + 1]), height,
                                                             width, start, s.spatial);
      const opmath_t a = static_cast<opmath_t>(weights[i]);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const opmath_t w = a * c.bw[k];
        if (c.pos[k] < 0) {
          off_map += w;
          continue;
        }
        opmath_t v[kVec];
        load_pack<scalar_t, kVec>(head_value + c.pos[k] * row_stride, v);
#pragma unroll
        for (int j = 0; j < kVec; ++j) acc[j] += w * v[j];
      }
    }
  }
  Pack<scalar_t, kVec> result;
#pragma unroll
  for (int j = 0; j < kVec; ++j) result.v[j] = static_cast<scalar_t>(acc[j] + off_map * opmath_t(0));
  *reinterpret_cast<Pack<scalar_t, kVec>*>(output + bqm * s.channels + ch0) = result;
}

// kShuffle: the D / kVec threads of a (batch, query, head) are a power of two <= 32, aligned in a
// warp, so their partial sums are combined with shuffles. Otherwise partial sums use atomics.
template <typename scalar_t, int kVec, bool kShuffle>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ value,
                                const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                                const scalar_t* __restrict__ locations, const scalar_t* __restrict__ weights,
                                at::opmath_type<scalar_t>* __restrict__ grad_value,
                                at::opmath_type<scalar_t>* __restrict__ grad_locations,
                                at::opmath_type<scalar_t>* __restrict__ grad_weights, Sizes s, int64_t total) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t raw_idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // With shuffles every lane of the warp must take part, so threads past the end stay alive,
  // work on the last element and write nothing.
  if (!kShuffle && raw_idx >= total) return;
  const bool active = raw_idx < total;
  const int64_t idx = active ? raw_idx : total - 1;
  const int64_t groups = s.channels / kVec;
  const int64_t lane_in_group = idx % groups;
  const int64_t ch0 = lane_in_group * kVec;
  const int64_t bqm = idx / groups;
  const int64_t m = bqm % s.heads;
  const int64_t b = bqm / (s.heads * s.queries);
  const int64_t row_stride = s.heads * s.channels;
  const scalar_t* head_value = value + b * s.spatial * row_stride + m * s.channels + ch0;
  opmath_t* head_grad_value = grad_value + b * s.spatial * row_stride + m * s.channels + ch0;
  opmath_t g[kVec];
  load_pack<scalar_t, kVec>(grad_output + bqm * s.channels + ch0, g);
  int64_t i = bqm * s.levels * s.points;
  for (int64_t l = 0; l < s.levels; ++l) {
    const int64_t height = shapes[2 * l], width = shapes[2 * l + 1], start = starts[l];
    for (int64_t p = 0; p < s.points; ++p, ++i) {
      const Corners<opmath_t> c = bilinear_corners<opmath_t>(static_cast<opmath_t>(locations[2 * i]),
                                                             static_cast<opmath_t>(locations[2 * i + 1]), height,
                                                             width, start, s.spatial);
      const opmath_t a = static_cast<opmath_t>(weights[i]);
      opmath_t dot[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        dot[k] = opmath_t(0);
        if (c.pos[k] < 0) continue;
        opmath_t v[kVec];
        load_pack<scalar_t, kVec>(head_value + c.pos[k] * row_stride, v);
        const opmath_t w = a * c.bw[k];
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          dot[k] += g[j] * v[j];
          if (active) atomicAdd(head_grad_value + c.pos[k] * row_stride + j, w * g[j]);
        }
      }
      const opmath_t bx = opmath_t(1) - c.lx, by = opmath_t(1) - c.ly;
      opmath_t gw = c.bw[0] * dot[0] + c.bw[1] * dot[1] + c.bw[2] * dot[2] + c.bw[3] * dot[3];
      opmath_t gx = a * (by * (dot[1] - dot[0]) + c.ly * (dot[3] - dot[2])) * static_cast<opmath_t>(width);
      opmath_t gy = a * (bx * (dot[2] - dot[0]) + c.lx * (dot[3] - dot[1])) * static_cast<opmath_t>(height);
      if constexpr (kShuffle) {
        for (int offset = static_cast<int>(groups) / 2; offset > 0; offset /= 2) {
          gw += __shfl_xor_sync(0xffffffffu, gw, offset);
          gx += __shfl_xor_sync(0xffffffffu, gx, offset);
          gy += __shfl_xor_sync(0xffffffffu, gy, offset);
        }
        if (active && lane_in_group == 0) {
          grad_weights[i] = gw;
          grad_locations[2 * i] = gx;
          grad_locations[2 * i + 1] = gy;
        }
      } else {
        atomicAdd(grad_weights + i, gw);
        atomicAdd(grad_locations + 2 * i, gx);
        atomicAdd(grad_locations + 2 * i + 1, gy);
      }
    }
  }
}

// Widest vector (16 bytes) that divides D and keeps every pointer aligned.
template <typename scalar_t>
int pick_vector_width(int64_t channels, std::initializer_list<const void*> pointers) {
  for (int vec = 16 / static_cast<int>(sizeof(scalar_t)); vec > 1; vec /= 2) {
    bool ok = channels % vec == 0;
    for (const void* ptr : pointers) ok = ok && reinterpret_cast<uintptr_t>(ptr) % (vec * sizeof(scalar_t)) == 0;
    if (ok) return vec;
  }
  return 1;
}

template <typename Body>
void dispatch_vector_width(int vec, Body&& body) {
  switch (vec) {
    case 8: body(std::integral_constant<int, 8>{}); break;
    case 4: body(std::integral_constant<int, 4>{}); break;
    case 2: body(std::integral_constant<int, 2>{}); break;
    default: body(std::integral_constant<int, 1>{}); break;
  }
}

unsigned int blocks_for(int64_t threads) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "msda: input too large for one launch");
  return static_cast<unsigned int>(blocks);
}

Sizes sizes_of(const Dims& d) { return {d.batch, d.spatial, d.heads, d.channels, d.queries, d.levels, d.points}; }

at::Tensor ms_deform_attn_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights, int64_t im2col_step) {
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, im2col_step);
  const c10::cuda::CUDAGuard guard(value.device());
  auto value_c = value.contiguous();
  auto shapes_c = spatial_shapes.to(at::kLong).contiguous();  // int32 or int64 accepted
  auto starts_c = level_start_index.to(at::kLong).contiguous();
  auto locations_c = sampling_locations.contiguous();
  auto weights_c = attention_weights.contiguous();
  auto output = at::zeros({d.batch, d.queries, d.heads * d.channels}, value.options());
  if (output.numel() == 0 || d.levels * d.points == 0) return output;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cuda", [&] {
    const int vec = pick_vector_width<scalar_t>(d.channels, {value_c.data_ptr(), output.data_ptr()});
    dispatch_vector_width(vec, [&](auto width) {
      constexpr int kVec = decltype(width)::value;
      const int64_t total = d.batch * d.queries * d.heads * (d.channels / kVec);
      forward_kernel<scalar_t, kVec><<<blocks_for(total), kThreads, 0, stream>>>(
          value_c.data_ptr<scalar_t>(), shapes_c.data_ptr<int64_t>(), starts_c.data_ptr<int64_t>(),
          locations_c.data_ptr<scalar_t>(), weights_c.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), sizes_of(d),
          total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    int64_t im2col_step) {
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, im2col_step);
  check_grad_output(grad_output, d);
  const c10::cuda::CUDAGuard guard(value.device());
  auto grad_c = grad_output.to(value.scalar_type()).contiguous();
  auto value_c = value.contiguous();
  auto shapes_c = spatial_shapes.to(at::kLong).contiguous();  // int32 or int64 accepted
  auto starts_c = level_start_index.to(at::kLong).contiguous();
  auto locations_c = sampling_locations.contiguous();
  auto weights_c = attention_weights.contiguous();
  const auto opmath = value.options().dtype(at::toOpMathType(value.scalar_type()));
  auto grad_value = at::zeros(value.sizes(), opmath);
  auto grad_locations = at::zeros(sampling_locations.sizes(), opmath);
  auto grad_weights = at::zeros(attention_weights.sizes(), opmath);
  if (grad_c.numel() > 0 && d.levels * d.points > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      const int vec = pick_vector_width<scalar_t>(d.channels, {value_c.data_ptr(), grad_c.data_ptr()});
      dispatch_vector_width(vec, [&](auto width) {
        constexpr int kVec = decltype(width)::value;
        const int64_t groups = d.channels / kVec;
        const int64_t total = d.batch * d.queries * d.heads * groups;
        const bool shuffle = groups <= 32 && (groups & (groups - 1)) == 0;
        auto launch = [&](auto use_shuffle) {
          backward_kernel<scalar_t, kVec, decltype(use_shuffle)::value><<<blocks_for(total), kThreads, 0, stream>>>(
              grad_c.data_ptr<scalar_t>(), value_c.data_ptr<scalar_t>(), shapes_c.data_ptr<int64_t>(),
              starts_c.data_ptr<int64_t>(), locations_c.data_ptr<scalar_t>(), weights_c.data_ptr<scalar_t>(),
              grad_value.data_ptr<opmath_t>(), grad_locations.data_ptr<opmath_t>(), grad_weights.data_ptr<opmath_t>(),
              sizes_of(d), total);
        };
        if (shuffle) {
          launch(std::true_type{});
        } else {
          launch(std::false_type{});
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  const auto dtype = value.scalar_type();
  return {grad_value.to(dtype), grad_locations.to(dtype), grad_weights.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(msda, CUDA, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cuda);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cuda);
}

}  // namespace msda
