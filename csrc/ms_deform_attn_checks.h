// Shape, dtype and device checks shared by the CPU and CUDA kernels. The Python wrapper checks the
// same things with friendlier messages; these guard direct calls of torch.ops.msda.* .
#pragma once
#include <ATen/ATen.h>

namespace msda {

struct Dims {
  int64_t batch, spatial, heads, channels, queries, levels, points;
  c10::Device device = c10::Device(c10::kCPU);  // value's device: every other input must be there too
};

// a * b, or false when it overflows int64 (sizes are >= 0).
inline bool multiply_fits(int64_t a, int64_t b, int64_t& product) { return !__builtin_mul_overflow(a, b, &product); }

// The element count of [sizes...] (>= 0 each), checked against int64 overflow: the kernels index
// every tensor with int64 offsets, and an overflowed count would silently wrap.
inline int64_t checked_numel(std::initializer_list<int64_t> sizes, const char* what) {
  int64_t count = 1;
  for (const int64_t size : sizes) {
    TORCH_CHECK(multiply_fits(count, size, count), "msda: ", what, " would have more than 2^63 - 1 elements, more ",
                "than int64 indexing allows");
  }
  return count;
}

inline bool is_index_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kLong || t.scalar_type() == at::kInt;
}

inline Dims check_and_get_dims(const at::Tensor& value, const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                               const at::Tensor& attention_weights, int64_t im2col_step) {
  // devices first: the checks below must never read data of a tensor that lives elsewhere (meta, say)
  const std::pair<const char*, const at::Tensor*> named[] = {{"spatial_shapes", &spatial_shapes},
                                                             {"level_start_index", &level_start_index},
                                                             {"sampling_locations", &sampling_locations},
                                                             {"attention_weights", &attention_weights}};
  for (const auto& [name, t] : named) {
    TORCH_CHECK(t->device() == value.device(), "msda: ", name, " is on ", t->device(), " but value is on ",
                value.device(), "; all inputs must share a device");
  }
  TORCH_CHECK(im2col_step > 0, "msda: im2col_step must be positive, got ", im2col_step);
  TORCH_CHECK(value.dim() == 4, "msda: value must be [B, S, M, D], got ", value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "msda: spatial_shapes must be [L, 2], got ", spatial_shapes.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "msda: sampling_locations must be [B, Q, M, L, P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, "msda: attention_weights must be [B, Q, M, L, P], got ",
              attention_weights.sizes());
  TORCH_CHECK(is_index_dtype(spatial_shapes), "msda: spatial_shapes must be int64 or int32, got ",
              spatial_shapes.scalar_type());
  TORCH_CHECK(is_index_dtype(level_start_index), "msda: level_start_index must be int64 or int32, got ",
              level_start_index.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "msda: sampling_locations (", sampling_locations.scalar_type(), ") and attention_weights (",
              attention_weights.scalar_type(), ") must have the dtype of value (", value.scalar_type(), ")");
  Dims d{value.size(0), value.size(1), value.size(2), value.size(3),
         sampling_locations.size(1), spatial_shapes.size(0), sampling_locations.size(4), value.device()};
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == d.levels,
              "msda: level_start_index must be [L=", d.levels, "], got ", level_start_index.sizes());
  TORCH_CHECK(sampling_locations.size(0) == d.batch && sampling_locations.size(2) == d.heads &&
                  sampling_locations.size(3) == d.levels,
              "msda: sampling_locations must be [B=", d.batch, ", Q, M=", d.heads, ", L=", d.levels,
              ", P, 2], got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() == at::IntArrayRef({d.batch, d.queries, d.heads, d.levels, d.points}),
              "msda: attention_weights must be [B, Q, M, L, P] matching sampling_locations, got ",
              attention_weights.sizes());
  // every input's own element count fits (torch checks that); the output's is a new product
  checked_numel({d.batch, d.queries, d.heads, d.channels},
                "the output [B, Q, M*D] (B and Q from sampling_locations, M and D from value)");
  return d;
}

inline void check_grad_output(const at::Tensor& grad_output, const Dims& d) {
  TORCH_CHECK(grad_output.device() == d.device, "msda: grad_output is on ", grad_output.device(),
              " but value is on ", d.device, "; all inputs must share a device");
  TORCH_CHECK(grad_output.numel() == d.batch * d.queries * d.heads * d.channels,
              "msda: grad_output must be [B, Q, M*D] = [", d.batch, ", ", d.queries, ", ", d.heads * d.channels,
              "], got ", grad_output.sizes());
}

}  // namespace msda
