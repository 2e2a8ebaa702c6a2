// CPU kernels of multi-scale deformable attention: the op entry points, and the scalar kernels for
// what the vectorised fp32 kernels (ms_deform_attn_cpu_fp32.cpp: fp32 with D a multiple of 8, the
// Deformable DETR case) do not take: fp64, fp16, bf16 and other channel counts.
//
// Scalar kernels: work is split per (batch, query, head) "row" of L·P sampling points. For each point
// the four bilinear corners are computed branch-free; then the D channels of every corner are read
// and combined in a loop the compiler vectorises across channels. Corners outside the map get
// position -1 and read a row of zeros, so the channel loop has no branches.
//
// Forward: parallel over (batch, query). Backward: parallel over (batch, head), so every thread
// owns its slice value[b, :, m, :] of grad_value and needs no atomics; one pass over D yields
// the four corner dot products <grad_out, v_corner> (location and weight gradients follow from
// them) and scatters grad_out · weight into the corners.
//
// Channel loops are instantiated for D = 16, 32, 64 at compile time (unrolled, accumulators in
// registers) and for any other D at run time.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "levels.h"
#include "ms_deform_attn_cpu_fp32.h"
#include "ms_deform_attn_checks.h"
#include "memory.h"

namespace msda {
namespace {

// Bilinear corners of one sampling point. Corner k (order (y0, x0), (y0, x1), (y1, x0), (y1, x1))
// has position pos[k] in [0, S), or -1 when outside the map, and bilinear weight bw[k] (0 when
// outside). lx, ly are the fractional offsets, needed for the location gradient.
//
// NaN in, NaN out, as grid_sample: a NaN or infinite coordinate places no corner on the map (NaN
// fails every comparison, so it counts as outside), but its fractional offset is NaN, and so are
// the four bilinear weights, the output row and the gradients that depend on them (the weight's,
// and the other coordinate's); grad_value gets nothing from such a point.
template <typename opmath_t>
struct Corners {
  int64_t pos[4];
  opmath_t bw[4];
  opmath_t lx, ly;
};

template <typename opmath_t>
inline Corners<opmath_t> bilinear_corners(opmath_t x_norm, opmath_t y_norm, const Level& lv) {
  Corners<opmath_t> c;
  const opmath_t w = static_cast<opmath_t>(lv.width), h = static_cast<opmath_t>(lv.height);
  opmath_t x = x_norm * w - opmath_t(0.5);
  opmath_t y = y_norm * h - opmath_t(0.5);
  const opmath_t nan_x = x - x, nan_y = y - y;  // 0, or NaN for a non-finite coordinate
  // NaN fails every comparison, so NaN and far-away points count as outside.
  const bool inside = (x > opmath_t(-1)) & (y > opmath_t(-1)) & (x < w) & (y < h);
  x = inside ? x : opmath_t(-1);  // keeps floor() and the int conversion in range
  y = inside ? y : opmath_t(-1);
  const opmath_t fx = std::floor(x), fy = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  c.lx = x - fx + nan_x;
  c.ly = y - fy + nan_y;
  const bool in_x0 = inside & (x0 >= 0), in_x1 = inside & (x0 + 1 < lv.width);
  const bool in_y0 = y0 >= 0, in_y1 = y0 + 1 < lv.height;
  const int64_t row0 = lv.start + y0 * lv.width + x0, row1 = row0 + lv.width;
  const bool in[4] = {in_y0 & in_x0, in_y0 & in_x1, in_y1 & in_x0, in_y1 & in_x1};
  const int64_t pos[4] = {row0, row0 + 1, row1, row1 + 1};
  const opmath_t bx = opmath_t(1) - c.lx, by = opmath_t(1) - c.ly;
  const opmath_t bw[4] = {by * bx, by * c.lx, c.ly * bx, c.ly * c.lx};
  for (int k = 0; k < 4; ++k) {
    c.pos[k] = in[k] ? pos[k] : -1;
    c.bw[k] = in[k] ? bw[k] : bw[k] * opmath_t(0);  // 0 off the map; NaN stays NaN
  }
  return c;
}

template <typename scalar_t, int kChannels>
void forward_kernel(const scalar_t* value, const std::vector<Level>& levels, const scalar_t* locations,
                    const scalar_t* weights, scalar_t* output, const Dims& d) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t channels = kChannels > 0 ? kChannels : d.channels;
  const int64_t row_stride = d.heads * channels;  // elements between consecutive positions s
  const int64_t n = d.levels * d.points;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, d.heads * n));
  at::parallel_for(0, d.batch * d.queries, grain, [&](int64_t begin, int64_t end) {
    // accumulator: a local array when D is fixed, so it stays in registers
    std::vector<opmath_t> acc_storage(kChannels > 0 ? 0 : channels);
    opmath_t acc_fixed[kChannels > 0 ? kChannels : 1];
    opmath_t* __restrict acc = kChannels > 0 ? acc_fixed : acc_storage.data();
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / d.queries;
      for (int64_t m = 0; m < d.heads; ++m) {
        const scalar_t* head_value = value + b * d.spatial * row_stride + m * channels;
        for (int64_t ch = 0; ch < channels; ++ch) acc[ch] = opmath_t(0);
        // (l, p) loops rather than i / P: a 64-bit division per point cost 12% of the time
        for (int64_t l = 0, i = (bq * d.heads + m) * n; l < d.levels; ++l) {
          const Level& lv = levels[l];
          for (int64_t p = 0; p < d.points; ++p, ++i) {
            const Corners<opmath_t> c = bilinear_corners<opmath_t>(
                static_cast<opmath_t>(locations[2 * i]), static_cast<opmath_t>(locations[2 * i + 1]), lv);
            const opmath_t a = static_cast<opmath_t>(weights[i]);
            const scalar_t* __restrict v0 = c.pos[0] >= 0 ? head_value + c.pos[0] * row_stride : zeros.data();
            const scalar_t* __restrict v1 = c.pos[1] >= 0 ? head_value + c.pos[1] * row_stride : zeros.data();
            const scalar_t* __restrict v2 = c.pos[2] >= 0 ? head_value + c.pos[2] * row_stride : zeros.data();
            const scalar_t* __restrict v3 = c.pos[3] >= 0 ? head_value + c.pos[3] * row_stride : zeros.data();
            const opmath_t w0 = a * c.bw[0], w1 = a * c.bw[1], w2 = a * c.bw[2], w3 = a * c.bw[3];
            for (int64_t ch = 0; ch < channels; ++ch) {
              acc[ch] += w0 * static_cast<opmath_t>(v0[ch]) + w1 * static_cast<opmath_t>(v1[ch]) +
                         w2 * static_cast<opmath_t>(v2[ch]) + w3 * static_cast<opmath_t>(v3[ch]);
            }
          }
        }
        scalar_t* dst = output + (bq * d.heads + m) * channels;
        for (int64_t ch = 0; ch < channels; ++ch) dst[ch] = static_cast<scalar_t>(acc[ch]);
      }
    }
  });
}

template <typename scalar_t, int kChannels>
void backward_kernel(const scalar_t* grad_output, const scalar_t* value, const std::vector<Level>& levels,
                     const scalar_t* locations, const scalar_t* weights, at::opmath_type<scalar_t>* grad_value,
                     scalar_t* grad_locations, scalar_t* grad_weights, const Dims& d) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t channels = kChannels > 0 ? kChannels : d.channels;
  const int64_t row_stride = d.heads * channels;
  const int64_t n = d.levels * d.points;
  at::parallel_for(0, d.batch * d.heads, 1, [&](int64_t begin, int64_t end) {
    // grad_output row: a local array when D is fixed, so it cannot alias grad_value
    std::vector<opmath_t> g_storage(kChannels > 0 ? 0 : channels);
    opmath_t g_fixed[kChannels > 0 ? kChannels : 1];
    opmath_t* __restrict g = kChannels > 0 ? g_fixed : g_storage.data();
    const std::vector<scalar_t> zeros(channels, scalar_t(0));
    // invalid corners scatter into their own scratch rows, so the four targets never alias
    std::vector<opmath_t> discard(4 * channels);
    // This thread owns the (batch, head) pairs [begin, end). It walks queries in the outer loop and
    // its heads in the inner one, so rows of locations, weights and grad_output are read in order
    // and the heads' slices of a position's value row are used together (walking one head over all
    // queries at a time measured 1.25x slower: strided rows the prefetcher does not follow).
    for (int64_t b = begin / d.heads; b * d.heads < end; ++b) {
      const int64_t m_begin = std::max(begin, b * d.heads) - b * d.heads;
      const int64_t m_end = std::min(end, (b + 1) * d.heads) - b * d.heads;
      for (int64_t q = 0; q < d.queries; ++q) {
        const int64_t bq = b * d.queries + q;
        for (int64_t m = m_begin; m < m_end; ++m) {
          const scalar_t* head_value = value + b * d.spatial * row_stride + m * channels;
          opmath_t* head_grad_value = grad_value + b * d.spatial * row_stride + m * channels;
          const scalar_t* go = grad_output + (bq * d.heads + m) * channels;
          for (int64_t ch = 0; ch < channels; ++ch) g[ch] = static_cast<opmath_t>(go[ch]);
          const int64_t row = (bq * d.heads + m) * n;
          // (l, p) loops rather than i / P: a 64-bit division per point cost 12% of the time
          for (int64_t l = 0, i = row; l < d.levels; ++l) {
            const Level& lv = levels[l];
            for (int64_t p = 0; p < d.points; ++p, ++i) {
              const Corners<opmath_t> c = bilinear_corners<opmath_t>(
                  static_cast<opmath_t>(locations[2 * i]), static_cast<opmath_t>(locations[2 * i + 1]), lv);
              const opmath_t a = static_cast<opmath_t>(weights[i]);
              const int64_t p0 = c.pos[0], p1 = c.pos[1], p2 = c.pos[2], p3 = c.pos[3];
              const scalar_t* __restrict v0 = p0 >= 0 ? head_value + p0 * row_stride : zeros.data();
              const scalar_t* __restrict v1 = p1 >= 0 ? head_value + p1 * row_stride : zeros.data();
              const scalar_t* __restrict v2 = p2 >= 0 ? head_value + p2 * row_stride : zeros.data();
              const scalar_t* __restrict v3 = p3 >= 0 ? head_value + p3 * row_stride : zeros.data();
              opmath_t* __restrict d0 = p0 >= 0 ? head_grad_value + p0 * row_stride : discard.data();
              opmath_t* __restrict d1 = p1 >= 0 ? head_grad_value + p1 * row_stride : discard.data() + channels;
              opmath_t* __restrict d2 = p2 >= 0 ? head_grad_value + p2 * row_stride : discard.data() + 2 * channels;
              opmath_t* __restrict d3 = p3 >= 0 ? head_grad_value + p3 * row_stride : discard.data() + 3 * channels;
              const opmath_t w0 = a * c.bw[0], w1 = a * c.bw[1], w2 = a * c.bw[2], w3 = a * c.bw[3];
              opmath_t dot0 = 0, dot1 = 0, dot2 = 0, dot3 = 0;
              // One pass: the corner dot products <g, v_k> (for the location and weight gradients)
              // and the scatter of g * weight into grad_value. The pragma lets the compiler
              // vectorise the reductions (it may not reassociate them otherwise).
#pragma omp simd reduction(+ : dot0, dot1, dot2, dot3)
              for (int64_t ch = 0; ch < channels; ++ch) {
                const opmath_t gc = g[ch];
                dot0 += gc * static_cast<opmath_t>(v0[ch]);
                dot1 += gc * static_cast<opmath_t>(v1[ch]);
                dot2 += gc * static_cast<opmath_t>(v2[ch]);
                dot3 += gc * static_cast<opmath_t>(v3[ch]);
                d0[ch] += w0 * gc;
                d1[ch] += w1 * gc;
                d2[ch] += w2 * gc;
                d3[ch] += w3 * gc;
              }
              grad_weights[i] = static_cast<scalar_t>(c.bw[0] * dot0 + c.bw[1] * dot1 + c.bw[2] * dot2 + c.bw[3] * dot3);
              // d(sample)/dx in pixels, times dx/dx_normalized = W (and H for y)
              const opmath_t bx = opmath_t(1) - c.lx, by = opmath_t(1) - c.ly;
              const opmath_t gx = by * (dot1 - dot0) + c.ly * (dot3 - dot2);
              const opmath_t gy = bx * (dot2 - dot0) + c.lx * (dot3 - dot1);
              grad_locations[2 * i] = static_cast<scalar_t>(a * gx * static_cast<opmath_t>(lv.width));
              grad_locations[2 * i + 1] = static_cast<scalar_t>(a * gy * static_cast<opmath_t>(lv.height));
            }
          }
        }
      }
    }
  });
}

// Calls body(std::integral_constant<int, D>) with D fixed at compile time for the common head
// sizes, or 0 (any D, decided at run time).
template <typename Body>
void dispatch_channels(int64_t channels, Body&& body) {
  switch (channels) {
    case 16: body(std::integral_constant<int, 16>{}); break;
    case 32: body(std::integral_constant<int, 32>{}); break;
    case 64: body(std::integral_constant<int, 64>{}); break;
    default: body(std::integral_constant<int, 0>{}); break;
  }
}

// Whether the fp32 kernels should copy value into padded head-major maps (see
// ms_deform_attn_cpu_fp32.h): when the queries sample the maps many times over, as in the encoder.
bool use_padded_maps(const Dims& d) { return d.queries * d.levels * d.points >= d.spatial; }

// value with contiguous channels, as the fp32 kernels read it (copied only when they are strided).
at::Tensor with_contiguous_channels(const at::Tensor& value) {
  return value.stride(3) == 1 ? value : value.contiguous();
}

at::Tensor ms_deform_attn_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                              const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                              const at::Tensor& attention_weights, int64_t im2col_step) {
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, im2col_step);
  const auto levels = read_levels(spatial_shapes, level_start_index, d.spatial);
  auto locations_c = sampling_locations.contiguous();
  auto weights_c = attention_weights.contiguous();
  if (value.scalar_type() == at::kFloat && fp32_kernels_apply(d)) {
    auto output = empty_recycled({d.batch, d.queries, d.heads * d.channels});
    if (output.numel() == 0) return output;
    if (use_padded_maps(d)) {
      forward_fp32_padded(with_contiguous_channels(value), levels, locations_c.data_ptr<float>(),
                          weights_c.data_ptr<float>(), output.data_ptr<float>(), d);
    } else {
      forward_fp32_in_place(with_contiguous_channels(value), levels, locations_c.data_ptr<float>(),
                            weights_c.data_ptr<float>(), output.data_ptr<float>(), d);
    }
    return output;
  }
  auto value_c = value.contiguous();
  auto output = at::zeros({d.batch, d.queries, d.heads * d.channels}, value.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_cpu", [&] {
    dispatch_channels(d.channels, [&](auto fixed) {
      forward_kernel<scalar_t, decltype(fixed)::value>(value_c.data_ptr<scalar_t>(), levels,
                                                       locations_c.data_ptr<scalar_t>(), weights_c.data_ptr<scalar_t>(),
                                                       output.data_ptr<scalar_t>(), d);
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    int64_t im2col_step) {
  const Dims d = check_and_get_dims(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, im2col_step);
  check_grad_output(grad_output, d);
  const auto levels = read_levels(spatial_shapes, level_start_index, d.spatial);
  auto grad_c = grad_output.to(value.scalar_type()).contiguous();
  auto locations_c = sampling_locations.contiguous();
  auto weights_c = attention_weights.contiguous();
  if (value.scalar_type() == at::kFloat && fp32_kernels_apply(d)) {
    // every location and weight gets its gradient written
    auto grad_locations = empty_recycled(locations_c.sizes());
    auto grad_weights = empty_recycled(weights_c.sizes());
    if (grad_locations.numel() == 0) return {at::zeros_like(value), grad_locations, grad_weights};
    if (use_padded_maps(d)) {
      auto grad_value = empty_recycled(value.sizes());
      backward_fp32_padded(grad_c.data_ptr<float>(), with_contiguous_channels(value), levels,
                           locations_c.data_ptr<float>(), weights_c.data_ptr<float>(), grad_value.data_ptr<float>(),
                           grad_locations.data_ptr<float>(), grad_weights.data_ptr<float>(), d);
      return {grad_value, grad_locations, grad_weights};
    }
    auto value_c = value.contiguous();
    auto grad_value = empty_recycled(value.sizes()).zero_();
    backward_fp32_in_place(grad_c.data_ptr<float>(), value_c, levels, locations_c.data_ptr<float>(),
                           weights_c.data_ptr<float>(), grad_value.data_ptr<float>(), grad_locations.data_ptr<float>(),
                           grad_weights.data_ptr<float>(), d);
    return {grad_value, grad_locations, grad_weights};
  }
  auto value_c = value.contiguous();
  auto grad_locations = at::zeros_like(locations_c);
  auto grad_weights = at::zeros_like(weights_c);
  // Half types accumulate grad_value in fp32 and convert once at the end.
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(at::toOpMathType(value.scalar_type())));
  if (grad_locations.numel() > 0 && value.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      dispatch_channels(d.channels, [&](auto fixed) {
        backward_kernel<scalar_t, decltype(fixed)::value>(
            grad_c.data_ptr<scalar_t>(), value_c.data_ptr<scalar_t>(), levels, locations_c.data_ptr<scalar_t>(),
            weights_c.data_ptr<scalar_t>(), grad_value.data_ptr<opmath_t>(), grad_locations.data_ptr<scalar_t>(),
            grad_weights.data_ptr<scalar_t>(), d);
      });
    });
  }
  return {grad_value.to(value.scalar_type()), grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(msda, CPU, m) {
  m.impl("ms_deform_attn", &ms_deform_attn_cpu);
  m.impl("ms_deform_attn_backward", &ms_deform_attn_backward_cpu);
}

}  // namespace msda
