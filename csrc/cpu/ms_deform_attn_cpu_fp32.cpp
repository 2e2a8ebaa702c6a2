// Vectorised fp32 CPU kernels of multi-scale deformable attention (D a multiple of 8).
//
// Each (batch, query, head) row of N = L·P sampling points is done in two steps:
//   1. the bilinear corners of eight points at a time, in vector lanes, written to small per-thread
//      tables (corner positions or pointers, corner weights times the attention weight);
//   2. the channel loop over the points' four corners, eight channels per vector, with independent
//      accumulators so the FMAs do not wait on each other.
// The forward computes the tables of the next row before the channel loop of this one and prefetches
// the corners it will read (measured 10% faster: the corner loads miss L1 most of the time).
// The backward adds a third step: the four per-corner dot products <grad_out, value_corner> of a point
// are summed across lanes in registers (vec8::sum4_lanes, one store per point), transposed eight
// points at a time (vec8::transpose_8x4) and turned into the location and weight gradients in vector
// lanes again. It runs in parallel over (batch, head), so each thread owns its part of
// grad_value and needs no atomics.
//
// Positions are int32 (fp32_kernels_apply checks that every offset fits). In place, a corner outside
// the map has position -1 and weight 0 and reads a row of zeros; in padded maps (see the header) it
// reads the zero border, and points outside the map read the zero tail. A NaN or infinite location
// reads there too, but with NaN bilinear weights, so its output row and gradients are NaN as with
// grid_sample (see bilinear_corners in ms_deform_attn_cpu.cpp).
#include "ms_deform_attn_cpu_fp32.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "memory.h"
#include "vec8.h"

namespace msda {

namespace {

// Calls body(claim) once on each intra-op thread; claim() hands out the tasks 0, 1, 2, ... one at a
// time (a thread done early takes more), and returns `count` or more when none is left. Unlike the
// equal static ranges of at::parallel_for, this balances tasks of unequal cost.
template <typename Body>
void parallel_dynamic(int64_t count, Body&& body) {
  std::atomic<int64_t> next{0};
  auto claim = [&next]() { return next.fetch_add(1, std::memory_order_relaxed); };
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), count), 1, [&](int64_t, int64_t) { body(claim); });
}

}  // namespace

PaddedMaps padded_maps(const std::vector<Level>& levels) {
  PaddedMaps maps;
  int64_t start = 0, widest = 0;
  for (const Level& lv : levels) {
    maps.levels.push_back({lv.height + 2, lv.width + 2, start});
    start += (lv.height + 2) * (lv.width + 2);
    widest = std::max(widest, lv.width + 2);
  }
  maps.zeros_start = start;
  maps.positions = start + widest + 2;  // a point outside reads up to zeros_start + W' + 1
  return maps;
}

void copy_head_to_padded_maps(const float* head_value, int64_t spatial_stride, const std::vector<Level>& levels,
                              const PaddedMaps& maps, float* head_padded, int64_t channels) {
  const int64_t D = channels, bytes = D * static_cast<int64_t>(sizeof(float));
  for (size_t l = 0; l < levels.size(); ++l) {
    const Level& lv = levels[l];
    const Level& plv = maps.levels[l];
    float* dst = head_padded + plv.start * D;
    std::memset(dst, 0, plv.width * bytes);  // top border row
    for (int64_t y = 0; y < lv.height; ++y) {
      float* out = dst + (y + 1) * plv.width * D;
      const float* row = head_value + (lv.start + y * lv.width) * spatial_stride;
      std::memset(out, 0, bytes);
      for (int64_t x = 0; x < lv.width; ++x) {
        // the rows of one head are spatial_stride apart (M·D floats): ask for them ahead of use
        __builtin_prefetch(row + (x + 8) * spatial_stride);
        __builtin_prefetch(row + (x + 8) * spatial_stride + D - 1);
        const float* __restrict in = row + x * spatial_stride;
        float* __restrict to = out + (x + 1) * D;
        if (D == 32) {  // Deformable DETR's head size: a fixed-size copy the compiler unrolls (no call)
          for (int64_t j = 0; j < 32; ++j) to[j] = in[j];
        } else {
          std::memcpy(to, in, bytes);
        }
      }
      std::memset(out + (plv.width - 1) * D, 0, bytes);
    }
    std::memset(dst + (plv.height - 1) * plv.width * D, 0, plv.width * bytes);  // bottom border row
  }
  std::memset(head_padded + maps.zeros_start * D, 0, (maps.positions - maps.zeros_start) * bytes);
}

#ifdef MSDA_HAVE_VEC8

namespace {

using vec8::f8;
using vec8::i8;
using vec8::kLanes;

// Per-lane constants of a row: point i of every row belongs to level i / P.
struct RowLevels {
  int64_t points, chunks;  // N and ceil(N / 8)
  std::vector<float> width, height;
  std::vector<int32_t> iwidth, iheight, start;  // in place: the map; padded: the padded map
  std::vector<int64_t> row_stride;              // padded: floats between map rows, per point

  RowLevels(const std::vector<Level>& levels, const std::vector<Level>& maps, int64_t points_per_level,
            int64_t channels)
      : points(static_cast<int64_t>(levels.size()) * points_per_level), chunks((points + kLanes - 1) / kLanes) {
    const int64_t padded = chunks * kLanes;
    width.assign(padded, 1.f);  // padding lanes: a 1x1 map, never read (their locations are outside)
    height.assign(padded, 1.f);
    iwidth.assign(padded, 1);
    iheight.assign(padded, 1);
    start.assign(padded, 0);
    row_stride.assign(padded, 0);
    for (int64_t i = 0; i < points; ++i) {
      const Level& lv = levels[i / points_per_level];
      const Level& map = maps[i / points_per_level];
      width[i] = static_cast<float>(lv.width);
      height[i] = static_cast<float>(lv.height);
      iwidth[i] = static_cast<int32_t>(map.width);
      iheight[i] = static_cast<int32_t>(map.height);
      start[i] = static_cast<int32_t>(map.start);
      row_stride[i] = map.width * channels;
    }
  }
};

// Bilinear corners of eight points: corner k in order (y0, x0), (y0, x1), (y1, x0), (y1, x1).
struct Corners8 {
  i8 pos[4];  // in place: position in [0, S) or -1 outside the map; padded: pos[0] only
  f8 bw[4];   // bilinear weight, 0 outside the map
  f8 lx, ly;  // fractional offsets, for the location gradient
};

// Points of chunk `chunk` of a row: x, y from the interleaved locations, a from the weights.
// A partial last chunk is padded with locations outside the map (-1) and zero weights.
inline void load_chunk(const float* xy, const float* weights, int64_t count, f8& x, f8& y, f8& a) {
  if (count == kLanes) {
    vec8::deinterleave(xy, x, y);
    a = vec8::load(weights);
    return;
  }
  alignas(32) float padded_xy[2 * kLanes];
  alignas(32) float padded_a[kLanes];
  for (int j = 0; j < 2 * kLanes; ++j) padded_xy[j] = j < 2 * count ? xy[j] : -1.f;
  for (int j = 0; j < kLanes; ++j) padded_a[j] = j < count ? weights[j] : 0.f;
  vec8::deinterleave(padded_xy, x, y);
  a = vec8::load(padded_a);
}

template <bool kPadded>
inline Corners8 bilinear_corners8(f8 x_norm, f8 y_norm, const RowLevels& rl, int64_t chunk, int32_t zeros_start) {
  const int64_t o = chunk * kLanes;
  const f8 w = vec8::load(&rl.width[o]), h = vec8::load(&rl.height[o]);
  const i8 iw = vec8::load(&rl.iwidth[o]), start = vec8::load(&rl.start[o]);
  const f8 minus_one = vec8::broadcast(-1.f), zero = vec8::broadcast(0.f), one = vec8::broadcast(1.f);
  f8 x = x_norm * w - 0.5f, y = y_norm * h - 0.5f;
  const f8 nan_x = x - x, nan_y = y - y;  // 0, or NaN for a non-finite coordinate
  // NaN fails every comparison, so NaN and far-away points count as outside; clamping them to -1
  // keeps the int conversion in range.
  const i8 inside = (x > -1.f) & (y > -1.f) & (x < w) & (y < h);
  x = inside ? x : minus_one;
  y = inside ? y : minus_one;
  const i8 x0 = vec8::floor_to_int(x), y0 = vec8::floor_to_int(y);
  Corners8 c;
  c.lx = x - vec8::to_float(x0) + nan_x;  // NaN in, NaN out: the bilinear weights carry it
  c.ly = y - vec8::to_float(y0) + nan_y;
  const f8 hx = one - c.lx, hy = one - c.ly;
  const f8 bw[4] = {hy * hx, hy * c.lx, c.ly * hx, c.ly * c.lx};
  if constexpr (kPadded) {
    // inside a map, x0 >= -1 and x0 + 1 <= W: all four corners are in the padded map
    c.pos[0] = inside ? start + (y0 + 1) * iw + (x0 + 1) : i8{} + zeros_start;
    for (int k = 0; k < 4; ++k) c.bw[k] = inside ? bw[k] : bw[k] * zero;  // 0 outside; NaN stays NaN
  } else {
    const i8 ih = vec8::load(&rl.iheight[o]);
    const i8 in_x0 = inside & (x0 >= 0), in_x1 = inside & (x0 + 1 < iw);
    const i8 in_y0 = y0 >= 0, in_y1 = y0 + 1 < ih;
    const i8 row0 = start + y0 * iw + x0, row1 = row0 + iw;
    const i8 in[4] = {in_y0 & in_x0, in_y0 & in_x1, in_y1 & in_x0, in_y1 & in_x1};
    const i8 pos[4] = {row0, row0 + 1, row1, row1 + 1};
    for (int k = 0; k < 4; ++k) {
      c.pos[k] = in[k] ? pos[k] : i8{} - 1;
      c.bw[k] = in[k] ? bw[k] : bw[k] * zero;
    }
  }
  return c;
}

inline void prefetch_lines(const float* data, int64_t count) {
  for (int64_t o = 0; o < count; o += 16) __builtin_prefetch(data + o);
  __builtin_prefetch(data + count - 1);
}

// Where value[b, s, m, :] is: value + b * batch + s * spatial + m * head.
struct Strides {
  int64_t batch, spatial, head;
};

// Per-thread tables of one row's corners (corner k of point i at k * padded + i).
struct RowTables {
  std::vector<const float*> corner;  // in place: the corner's value row, or a row of zeros
  std::vector<int32_t> pos;          // padded: position of corner (y0, x0) per point; in place: per corner
  std::vector<float> weight;         // corner weight times attention weight
  explicit RowTables(int64_t padded) : corner(4 * padded), pos(4 * padded), weight(4 * padded) {}
};

// Copies of one head of the output gradient's map interiors out of this thread's padded buffer into
// grad_value [B, S, M, D] (positions spatial_stride floats apart), with streaming stores: these
// rows are not read again here, and a normal store reads every line from memory first.
template <int kVecs>
void copy_head_from_padded_maps(const float* head_padded, const std::vector<Level>& levels, const PaddedMaps& maps,
                                float* head_grad, int64_t spatial_stride, int64_t channels) {
  const int64_t D = kVecs > 0 ? kVecs * kLanes : channels;
  const bool aligned = reinterpret_cast<uintptr_t>(head_grad) % 32 == 0 && spatial_stride % kLanes == 0;
  for (size_t l = 0; l < levels.size(); ++l) {
    const Level& lv = levels[l];
    const Level& plv = maps.levels[l];
    for (int64_t y = 0; y < lv.height; ++y) {
      const float* in = head_padded + (plv.start + (y + 1) * plv.width + 1) * D;
      float* out = head_grad + (lv.start + y * lv.width) * spatial_stride;
      for (int64_t x = 0; x < lv.width; ++x) {
        for (int64_t j = 0; j < D; j += kLanes) {
          const f8 v = vec8::load(in + x * D + j);
          if (aligned) {
            vec8::stream(out + x * spatial_stride + j, v);
          } else {
            vec8::store(out + x * spatial_stride + j, v);
          }
        }
      }
    }
  }
}

// Padded maps: `value` is the caller's tensor (strides `strides`); each task is one (batch, head),
// whose maps the thread first copies into its padded buffer (see copy_head_to_padded_maps) and then
// reads from there for all queries. Copying one head just before use, into a buffer each thread
// reuses, keeps the copy in L2 instead of writing an 18 MB copy of all heads to memory and reading
// it back (measured at the encoder shape, AVX2 build, caches cold: 20% less CPU time for the
// forward, 25-30% for forward+backward, where the backward does the same). With fewer (batch, head)
// pairs than threads, a pair's queries are split into several tasks, each thread copying the head
// it works on once.
template <int kVecs, bool kPadded>
void forward_kernel(const float* value, const Strides& strides, const RowLevels& rl, const PaddedMaps* maps,
                    const std::vector<Level>* levels, const float* locations, const float* weights, float* output,
                    const Dims& d) {
  const int64_t D = kVecs > 0 ? kVecs * kLanes : d.channels;
  const int64_t vecs = D / kLanes;
  const int64_t n = rl.points, padded = rl.chunks * kLanes;
  const int32_t stride = static_cast<int32_t>(strides.spatial);
  const int32_t zeros_start = kPadded ? static_cast<int32_t>(maps->zeros_start) : 0;
  // Work is handed out in tasks, each thread taking the next one when done: equal static ranges left
  // one thread 20% behind at the encoder shape (its queries sample differently). Padded maps: a task
  // is one (batch, head) over all its queries, so that one head's maps are what a thread reads (1.3x
  // faster than all heads per query); the rows of locations and weights are then read with a
  // stride, so they are prefetched. In place (few queries): a task is all heads of 32 queries.
  const int64_t total = d.batch * d.queries, block_queries = 32, pairs = d.batch * d.heads;
  const int64_t threads = at::get_num_threads();
  const int64_t splits = kPadded && pairs < threads ? std::min<int64_t>(d.queries, (threads + pairs - 1) / pairs) : 1;
  const int64_t blocks = kPadded ? pairs * splits : (total + block_queries - 1) / block_queries;
  parallel_dynamic(blocks, [&](auto claim) {
    int64_t held = -1;  // the (batch, head) whose maps are in head_maps
    RowTables tables[2] = {RowTables(padded), RowTables(padded)};
    const std::vector<float> zeros(D, 0.f);
    float* head_maps = kPadded ? scratch_floats(ScratchSlot::kValue, maps->positions * D) : nullptr;
    // Independent accumulators, but no more than eight vectors in all (16 registers with AVX2):
    // corner k adds into set k % kSets.
    constexpr int kSets = kVecs == 1 ? 4 : kVecs == 2 ? 4 : kVecs == 4 ? 2 : 1;
    std::vector<f8> acc_storage(kVecs > 0 ? 0 : vecs);
    f8 acc_fixed[kVecs > 0 ? kSets * kVecs : 1];
    f8* acc = kVecs > 0 ? acc_fixed : acc_storage.data();
    bool streamed = false;
    auto head_value = [&](int64_t row) {  // row = (b * Q + q) * M + m
      if constexpr (kPadded) return static_cast<const float*>(head_maps);
      return value + row / (d.queries * d.heads) * strides.batch + row % d.heads * strides.head;
    };
    auto fill = [&](int64_t row, RowTables& t) {
      const float* hv = head_value(row);
      for (int64_t chunk = 0; chunk < rl.chunks; ++chunk) {
        const int64_t first = row * n + chunk * kLanes;
        f8 x, y, a;
        load_chunk(locations + 2 * first, weights + first, std::min<int64_t>(kLanes, n - chunk * kLanes), x, y, a);
        const Corners8 c = bilinear_corners8<kPadded>(x, y, rl, chunk, zeros_start);
        if constexpr (kPadded) vec8::store(&t.pos[chunk * kLanes], c.pos[0]);
        for (int k = 0; k < 4; ++k) {
          if constexpr (!kPadded) {
            vec8::store_pointers(&t.corner[k * padded + chunk * kLanes], c.pos[k], hv, stride, zeros.data());
          }
          vec8::store(&t.weight[k * padded + chunk * kLanes], a * c.bw[k]);
        }
      }
      // start loading the corners the next channel loop reads
      if constexpr (kPadded) {
        for (int64_t i = 0; i < n; ++i) {
          const float* v00 = hv + static_cast<int64_t>(t.pos[i]) * D;
          for (int64_t o = 0; o < 2 * D; o += 16) {
            __builtin_prefetch(v00 + o);
            __builtin_prefetch(v00 + rl.row_stride[i] + o);
          }
        }
      } else {
        for (int64_t j = 0; j < 4 * padded; ++j) {
          __builtin_prefetch(t.corner[j]);
          __builtin_prefetch(t.corner[j] + D - 1);
        }
      }
    };
    for (int64_t block; (block = claim()) < blocks;) {
      const int64_t pair = block / splits, split = block % splits;  // padded maps
      const int64_t first = kPadded ? pair / d.heads * d.queries + split * d.queries / splits : block * block_queries;
      const int64_t last = kPadded ? pair / d.heads * d.queries + (split + 1) * d.queries / splits
                                   : std::min(total, first + block_queries);
      const int64_t head = kPadded ? pair % d.heads : 0;
      const int64_t rows = kPadded ? last - first : (last - first) * d.heads;
      if (rows == 0) continue;
      if (kPadded && pair != held) {
        copy_head_to_padded_maps(value + pair / d.heads * strides.batch + head * strides.head, strides.spatial,
                                 *levels, *maps, head_maps, D);
        held = pair;
      }
      // row = (b * Q + q) * M + m of the r-th row of the block
      auto row_of = [&](int64_t r) { return kPadded ? (first + r) * d.heads + head : first * d.heads + r; };
      fill(row_of(0), tables[0]);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row = row_of(r);
        const RowTables& t = tables[r & 1];
        if (r + 1 < rows) fill(row_of(r + 1), tables[(r + 1) & 1]);
        if (kPadded && r + 4 < rows) {
          const int64_t ahead = row_of(r + 4);
          prefetch_lines(locations + 2 * ahead * n, 2 * n);
          prefetch_lines(weights + ahead * n, n);
        }
        const float* hv = head_value(row);
        for (int64_t j = 0; j < kSets * vecs; ++j) acc[j] = f8{};
        for (int64_t i = 0; i < n; ++i) {
          const float* corner[4];
          if constexpr (kPadded) {
            corner[0] = hv + static_cast<int64_t>(t.pos[i]) * D;
            corner[1] = corner[0] + D;
            corner[2] = corner[0] + rl.row_stride[i];
            corner[3] = corner[2] + D;
          } else {
            for (int k = 0; k < 4; ++k) corner[k] = t.corner[k * padded + i];
          }
#pragma GCC unroll 4
          for (int k = 0; k < 4; ++k) {
            const float* __restrict v = corner[k];
            const f8 w = vec8::broadcast(t.weight[k * padded + i]);
            f8* __restrict acc_k = acc + (k % kSets) * vecs;
            for (int64_t j = 0; j < vecs; ++j) acc_k[j] += w * vec8::load(v + j * kLanes);
          }
        }
        for (int s = 1; s < kSets; ++s) {
          for (int64_t j = 0; j < vecs; ++j) acc[j] += acc[s * vecs + j];
        }
        float* dst = output + row * D;
        if (kPadded && reinterpret_cast<uintptr_t>(dst) % 32 == 0) {
          // streaming stores: a head's output rows are 128-byte pieces M·D floats apart, not read here
          // again; a normal store reads each line from memory first
          for (int64_t j = 0; j < vecs; ++j) vec8::stream(dst + j * kLanes, acc[j]);
          streamed = true;
        } else {
          for (int64_t j = 0; j < vecs; ++j) vec8::store(dst + j * kLanes, acc[j]);
        }
      }
    }
    if (streamed) vec8::stream_fence();
  });
}

// Corners of one query's points (one per chunk of eight), the tables the channel loop reads, and the
// points' attention weights.
struct QueryCorners {
  RowTables t;
  std::vector<Corners8> corners;
  std::vector<f8> a;
  explicit QueryCorners(int64_t chunks) : t(chunks * kLanes), corners(chunks), a(chunks) {}
};

// Where each thread's padded gradient buffer starts in its 2 MiB-aligned scratch block, in floats:
// 2112 bytes, half a 4 KiB page and one line, so that a corner's gradient and value (same position in
// two buffers) do not share their low 12 address bits (see backward_kernel).
constexpr int64_t kGradOffset = 528;

// In place, grad_value has value's strides (value is contiguous). Padded maps: value has any
// strides (channels contiguous) and grad_value is the contiguous [B, S, M, D] result; each task
// copies its head of value into the thread's padded buffer, accumulates into a zeroed padded
// gradient buffer of the thread, and copies that out to grad_value right after, while it is still
// in cache.
template <int kVecs, bool kPadded>
void backward_kernel(const float* grad_output, const float* value, const Strides& strides, const RowLevels& rl,
                     const float* locations, const float* weights, float* grad_value, float* grad_locations,
                     float* grad_weights, const Dims& d, const std::vector<Level>* levels, const PaddedMaps* maps) {
  const int64_t D = kVecs > 0 ? kVecs * kLanes : d.channels;
  const int64_t vecs = D / kLanes;
  const int64_t n = rl.points, chunks = rl.chunks, padded = chunks * kLanes;
  const int32_t zeros_start = kPadded ? static_cast<int32_t>(maps->zeros_start) : 0;
  parallel_dynamic(d.batch * d.heads, [&](auto claim) {
    float* head_maps = kPadded ? scratch_floats(ScratchSlot::kValue, maps->positions * D) : nullptr;
    // Without kGradOffset, head_grad[p] and head_maps[p] would share their low 21 address bits, and a
    // load of a corner's value could be held up by a pending store to the gradient of the same
    // corner of the point before (4K aliasing).
    float* head_grad = kPadded ? scratch_floats(ScratchSlot::kGradValue, maps->positions * D + kGradOffset) + kGradOffset
                               : nullptr;
    QueryCorners current(chunks), next(chunks);
    std::vector<f8> sums(padded, f8{});  // per point, lanes 0-3: <grad_out, value> of its four corners
    const std::vector<float> zeros(D, 0.f);
    std::vector<float> discard(4 * D);  // in place: scatter target of corners outside the map
    std::vector<f8> g_storage(kVecs > 0 ? 0 : vecs);
    f8 g_fixed[kVecs > 0 ? kVecs : 1];
    f8* g = kVecs > 0 ? g_fixed : g_storage.data();
    // A task is one (batch, head) over all queries: the thread owns that part of grad_value, so no
    // atomics, and one head's maps stay in L2 (1.1x at the encoder shape with B = 2). Tasks are handed
    // out one at a time: their cost differs with where the heads' points fall (equal static halves
    // left one thread 10% behind at the encoder shape).
    for (int64_t task; (task = claim()) < d.batch * d.heads;) {
      const int64_t b = task / d.heads, m = task % d.heads;
      const int64_t head_offset = b * strides.batch + m * strides.head;
      const float* hv = value + head_offset;
      float* hg = grad_value + head_offset;
      if constexpr (kPadded) {
        copy_head_to_padded_maps(hv, strides.spatial, *levels, *maps, head_maps, D);
        std::memset(head_grad, 0, maps->positions * D * sizeof(float));
        hv = head_maps;
        hg = head_grad;
      }
      // The corners of query bq's points, into qc. With padded maps, also start loading the value
      // and gradient lines they touch: prepare(q + 1) runs before the channel loop of q, so these
      // loads are on their way meanwhile. Measured at the encoder shape, B = 1, AVX2 build, two
      // threads, caches flushed before each call: 6% less time for the backward op (six alternating
      // runs, 21 calls each, on a loaded 2-core AMD EPYC); one thread, warm: no difference.
      auto prepare = [&](int64_t bq, QueryCorners& qc) {
        const int64_t row = (bq * d.heads + m) * n;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          const int64_t first = row + chunk * kLanes;
          f8 x, y;
          load_chunk(locations + 2 * first, weights + first, std::min<int64_t>(kLanes, n - chunk * kLanes), x, y,
                     qc.a[chunk]);
          qc.corners[chunk] = bilinear_corners8<kPadded>(x, y, rl, chunk, zeros_start);
          for (int k = 0; k < 4; ++k) {
            if (!kPadded || k == 0) vec8::store(&qc.t.pos[k * padded + chunk * kLanes], qc.corners[chunk].pos[k]);
            vec8::store(&qc.t.weight[k * padded + chunk * kLanes], qc.a[chunk] * qc.corners[chunk].bw[k]);
          }
        }
        if constexpr (kPadded) {
          for (int64_t i = 0; i < n; ++i) {
            const int64_t offset = static_cast<int64_t>(qc.t.pos[i]) * D;
            for (int64_t o = 0; o < 2 * D; o += 16) {
              __builtin_prefetch(hv + offset + o);
              __builtin_prefetch(hv + offset + rl.row_stride[i] + o);
              __builtin_prefetch(hg + offset + o, 1);
              __builtin_prefetch(hg + offset + rl.row_stride[i] + o, 1);
            }
          }
        }
      };
      prepare(b * d.queries, next);
      for (int64_t q = 0; q < d.queries; ++q) {
        const int64_t bq = b * d.queries + q;
        std::swap(current, next);
        if (q + 1 < d.queries) prepare(bq + 1, next);
        if (q + 4 < d.queries) {
          // one head's rows are strided, a pattern the hardware prefetcher does not follow
          const int64_t ahead = (bq + 4) * d.heads + m;
          prefetch_lines(locations + 2 * ahead * n, 2 * n);
          prefetch_lines(weights + ahead * n, n);
          prefetch_lines(grad_output + ahead * D, D);
        }
        const int64_t row = (bq * d.heads + m) * n;
        const RowTables& t = current.t;
        const std::vector<Corners8>& corners = current.corners;
        const std::vector<f8>& point_a = current.a;
        const float* go = grad_output + (bq * d.heads + m) * D;
        for (int64_t j = 0; j < vecs; ++j) g[j] = vec8::load(go + j * kLanes);
        for (int64_t i = 0; i < n; ++i) {
          int64_t offset[4];
          if constexpr (kPadded) {
            offset[0] = static_cast<int64_t>(t.pos[i]) * D;
            offset[1] = offset[0] + D;
            offset[2] = offset[0] + rl.row_stride[i];
            offset[3] = offset[2] + D;
          } else {
            for (int k = 0; k < 4; ++k) offset[k] = static_cast<int64_t>(t.pos[k * padded + i]) * strides.spatial;
          }
          f8 dot[4];
#pragma GCC unroll 4
          for (int k = 0; k < 4; ++k) {
            const bool read = kPadded || t.pos[k * padded + i] >= 0;
            const float* __restrict v = read ? hv + offset[k] : zeros.data();
            float* __restrict dv = read ? hg + offset[k] : discard.data() + k * D;
            const f8 w = vec8::broadcast(t.weight[k * padded + i]);
            dot[k] = f8{};
            for (int64_t j = 0; j < vecs; ++j) {
              dot[k] += g[j] * vec8::load(v + j * kLanes);
              vec8::store(dv + j * kLanes, vec8::load(dv + j * kLanes) + w * g[j]);
            }
          }
          // summed in registers: one store per point instead of four (the loop is bound by its
          // loads and stores)
          sums[i] = vec8::sum4_lanes(dot);
        }
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          const Corners8& c = corners[chunk];
          f8 s[4];  // lane j: the corner's dot product for point chunk * 8 + j
          vec8::transpose_8x4(&sums[chunk * kLanes], s);
          const f8 a = point_a[chunk];
          const f8 hx = 1.f - c.lx, hy = 1.f - c.ly;
          const f8 grad_a = (c.bw[0] * s[0] + c.bw[1] * s[1]) + (c.bw[2] * s[2] + c.bw[3] * s[3]);
          // d(sample)/dx in pixels, times dx/dx_normalized = W (and H for y)
          const f8 gx = a * (hy * (s[1] - s[0]) + c.ly * (s[3] - s[2])) * vec8::load(&rl.width[chunk * kLanes]);
          const f8 gy = a * (hx * (s[2] - s[0]) + c.lx * (s[3] - s[1])) * vec8::load(&rl.height[chunk * kLanes]);
          const int64_t first = row + chunk * kLanes, count = std::min<int64_t>(kLanes, n - chunk * kLanes);
          const bool aligned = reinterpret_cast<uintptr_t>(grad_weights + first) % 32 == 0 &&
                               reinterpret_cast<uintptr_t>(grad_locations + 2 * first) % 32 == 0;
          if (count == kLanes && aligned) {
            // Streaming stores: these rows are not read again here, and writing them through the
            // cache first reads every line from memory (measured 1.2x for the whole backward).
            vec8::stream(grad_weights + first, grad_a);
            vec8::interleave_stream(grad_locations + 2 * first, gx, gy);
          } else if (count == kLanes) {
            vec8::store(grad_weights + first, grad_a);
            vec8::interleave_store(grad_locations + 2 * first, gx, gy);
          } else {
            alignas(32) float ga[kLanes], gxy[2 * kLanes];
            vec8::store(ga, grad_a);
            vec8::interleave_store(gxy, gx, gy);
            std::copy(ga, ga + count, grad_weights + first);
            std::copy(gxy, gxy + 2 * count, grad_locations + 2 * first);
          }
        }
      }
      if constexpr (kPadded) {
        copy_head_from_padded_maps<kVecs>(head_grad, *levels, *maps, grad_value + (b * d.spatial * d.heads + m) * D,
                                          d.heads * D, D);
      }
    }
    vec8::stream_fence();  // the streaming stores are visible to other threads after this
  });
}

// Calls body(std::integral_constant<int, D / 8>) for the common head sizes, 0 for other multiples of 8.
template <typename Body>
void dispatch_vecs(int64_t channels, Body&& body) {
  switch (channels) {
    case 8: body(std::integral_constant<int, 1>{}); break;
    case 16: body(std::integral_constant<int, 2>{}); break;
    case 32: body(std::integral_constant<int, 4>{}); break;
    case 64: body(std::integral_constant<int, 8>{}); break;
    default: body(std::integral_constant<int, 0>{}); break;
  }
}

Strides strides_of(const at::Tensor& value) { return {value.stride(0), value.stride(1), value.stride(2)}; }

}  // namespace

bool fp32_kernels_apply(const Dims& d) {
  // int32 positions times the spatial stride (M * D in place, D padded) stay below 2^31; the padded
  // maps add 2 (H + W) + 4 positions per level, bounded here by S + 4096.
  const int64_t limit = std::numeric_limits<int32_t>::max();
  int64_t floats = 0;  // (S + 4096) * M * D, checked: with B = 0 the product of value's other sizes may overflow
  const bool small = d.spatial < limit && multiply_fits(d.spatial + 4096, d.heads, floats) &&
                     multiply_fits(floats, d.channels, floats) && floats < limit;
  return d.channels % kLanes == 0 && small && d.levels < 512;
}

void forward_fp32_in_place(const at::Tensor& value, const std::vector<Level>& levels, const float* locations,
                           const float* weights, float* output, const Dims& d) {
  const RowLevels rl(levels, levels, d.points, d.channels);
  dispatch_vecs(d.channels, [&](auto vecs) {
    forward_kernel<decltype(vecs)::value, false>(value.data_ptr<float>(), strides_of(value), rl, nullptr, nullptr,
                                                 locations, weights, output, d);
  });
}

void forward_fp32_padded(const at::Tensor& value, const std::vector<Level>& levels, const float* locations,
                         const float* weights, float* output, const Dims& d) {
  TORCH_CHECK(value.stride(3) == 1, "msda: forward_fp32_padded needs contiguous channels");
  const PaddedMaps maps = padded_maps(levels);
  const RowLevels rl(levels, maps.levels, d.points, d.channels);
  dispatch_vecs(d.channels, [&](auto vecs) {
    forward_kernel<decltype(vecs)::value, true>(value.data_ptr<float>(), strides_of(value), rl, &maps, &levels,
                                                locations, weights, output, d);
  });
}

void backward_fp32_in_place(const float* grad_output, const at::Tensor& value, const std::vector<Level>& levels,
                            const float* locations, const float* weights, float* grad_value, float* grad_locations,
                            float* grad_weights, const Dims& d) {
  TORCH_CHECK(value.is_contiguous(), "msda: backward_fp32_in_place needs a contiguous value");
  const RowLevels rl(levels, levels, d.points, d.channels);
  dispatch_vecs(d.channels, [&](auto vecs) {
    backward_kernel<decltype(vecs)::value, false>(grad_output, value.data_ptr<float>(), strides_of(value), rl,
                                                  locations, weights, grad_value, grad_locations, grad_weights, d,
                                                  nullptr, nullptr);
  });
}

void backward_fp32_padded(const float* grad_output, const at::Tensor& value, const std::vector<Level>& levels,
                          const float* locations, const float* weights, float* grad_value, float* grad_locations,
                          float* grad_weights, const Dims& d) {
  TORCH_CHECK(value.stride(3) == 1, "msda: backward_fp32_padded needs contiguous channels");
  const PaddedMaps maps = padded_maps(levels);
  const RowLevels rl(levels, maps.levels, d.points, d.channels);
  dispatch_vecs(d.channels, [&](auto vecs) {
    backward_kernel<decltype(vecs)::value, true>(grad_output, value.data_ptr<float>(), strides_of(value), rl,
                                                 locations, weights, grad_value, grad_locations, grad_weights, d,
                                                 &levels, &maps);
  });
}

#else  // no vector extension: the scalar kernels do all the work

bool fp32_kernels_apply(const Dims&) { return false; }
void forward_fp32_in_place(const at::Tensor&, const std::vector<Level>&, const float*, const float*, float*,
                           const Dims&) {}
void forward_fp32_padded(const at::Tensor&, const std::vector<Level>&, const float*, const float*, float*,
                         const Dims&) {}
void backward_fp32_in_place(const float*, const at::Tensor&, const std::vector<Level>&, const float*, const float*,
                            float*, float*, float*, const Dims&) {}
void backward_fp32_padded(const float*, const at::Tensor&, const std::vector<Level>&, const float*, const float*,
                          float*, float*, float*, const Dims&) {}

#endif

}  // namespace msda
