// The feature levels of one call, read once from spatial_shapes and level_start_index.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "ms_deform_attn_checks.h"

namespace msda {

struct Level {
  int64_t height, width, start;
};

// Checks that the levels are positive, their areas and offsets fit int64, and they are laid out back
// to back, covering exactly `spatial` rows.
inline std::vector<Level> read_levels(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                                      int64_t spatial) {
  auto shapes = spatial_shapes.to(at::kLong).contiguous();  // int32 or int64 accepted
  auto starts = level_start_index.to(at::kLong).contiguous();
  const int64_t* s = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  std::vector<Level> levels;
  int64_t expected_start = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    TORCH_CHECK(s[2 * l] > 0 && s[2 * l + 1] > 0, "msda: spatial_shapes[", l, "] must be positive, got (",
                s[2 * l], ", ", s[2 * l + 1], ")");
    TORCH_CHECK(st[l] == expected_start, "msda: level_start_index[", l, "] must be ", expected_start, ", got ",
                st[l]);
    levels.push_back({s[2 * l], s[2 * l + 1], st[l]});
    int64_t area = 0;
    TORCH_CHECK(multiply_fits(s[2 * l], s[2 * l + 1], area), "msda: spatial_shapes[", l, "] = (", s[2 * l], ", ",
                s[2 * l + 1], ") has H*W past 2^63 - 1 positions, more than int64 indexing allows");
    TORCH_CHECK(!__builtin_add_overflow(expected_start, area, &expected_start), "msda: spatial_shapes areas up to level ",
                l, " sum past 2^63 - 1 positions, more than int64 indexing allows");
  }
  TORCH_CHECK(expected_start == spatial, "msda: spatial_shapes areas sum to ", expected_start,
              " but value has S=", spatial);
  return levels;
}

}  // namespace msda
