// Shape and dtype checks shared by the CPU and CUDA kernels. The Python wrapper checks the same
// things with friendlier messages; these guard direct calls of torch.ops.msda.* .
#pragma once
#include <ATen/ATen.h>

namespace msda {

struct Dims {
  int64_t batch, spatial, heads, channels, queries, levels, points;
};

inline Dims check_and_get_dims(const at::Tensor& value, const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights, int64_t im2col_step) {
  TORCH_CHECK(im2col_step > 0, "msda: im2col_step must be positive, got ", im2col_step);
  TORCH_CHECK(value.dim() == 4, "msda: value must be [B, S, M, D], got ", value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "msda: spatial_shapes must be [L, 2], got ", spatial_shapes.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "msda: sampling_locations must be [B, Q, M, L, P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, "msda: attention_weights must be [B, Q, M, L, P], got ",
              attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "msda: spatial_shapes and level_start_index must be int64");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "msda: sampling_locations (", sampling_locations.scalar_type(), ") and attention_weights (",
              attention_weights.scalar_type(), ") must have the dtype of value (", value.scalar_type(), ")");
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->device() == value.device(), "msda: all inputs must be on ", value.device(), ", got one on ",
                t->device());
  }
  Dims d{value.size(0), value.size(1), value.size(2), value.size(3),
         sampling_locations.size(1), spatial_shapes.size(0), sampling_locations.size(4)};
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == d.levels,
              "msda: level_start_index must be [L=", d.levels, "], got ", level_start_index.sizes());
  TORCH_CHECK(sampling_locations.size(0) == d.batch && sampling_locations.size(2) == d.heads &&
                  sampling_locations.size(3) == d.levels,
              "msda: sampling_locations must be [B=", d.batch, ", Q, M=", d.heads, ", L=", d.levels,
              ", P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() == at::IntArrayRef({d.batch, d.queries, d.heads, d.levels, d.points}),
              "msda: attention_weights must be [B, Q, M, L, P] matching sampling_locations, got ",
              attention_weights.sizes());
  return d;
}

inline void check_grad_output(const at::Tensor& grad_output, const Dims& d) {
  TORCH_CHECK(grad_output.numel() == d.batch * d.queries * d.heads * d.channels,
              "msda: grad_output must be [B, Q, M*D] = [", d.batch, ", ", d.queries, ", ", d.heads * d.channels,
              "], got ", grad_output.sizes());
}

}  // namespace msda
