// Vectorised fp32 kernels for channel counts that are a multiple of 8 (Deformable DETR's D = 32
// among them). ms_deform_attn_cpu.cpp picks them when fp32_kernels_apply() says so and keeps the
// scalar kernels for everything else.
//
// They read value in one of two layouts:
//  - in place: the caller's tensor, any strides with contiguous channels;
//  - padded maps: a copy of one head [S', D] in which every level map has a one-pixel border of
//    zeros, followed by a tail of zeros, made by each thread for the (batch, head) it works on. All four bilinear corners of a point inside a map are then
//    inside the padded map, so the kernels need no per-corner bounds checks and address the corners
//    as (p, p + 1, p + W', p + W' + 1) from one position p. One head's corners are 128-byte
//    neighbours instead of M·D·4 bytes apart. The copy pays for itself when the queries sample the
//    maps many times over (the encoder: Q·L·P >= S), not for the decoder's few queries.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "levels.h"
#include "ms_deform_attn_checks.h"

namespace msda {

bool fp32_kernels_apply(const Dims& d);

// Where level maps sit in the padded head-major layout.
struct PaddedMaps {
  std::vector<Level> levels;  // padded (H + 2, W + 2) and start of each level
  int64_t zeros_start;        // first position of the zero tail (points outside every map read it)
  int64_t positions;          // S': all padded maps plus the tail
};

PaddedMaps padded_maps(const std::vector<Level>& levels);

// One head of value (positions spatial_stride floats apart, channels contiguous) into its padded
// maps head_padded [S', D], zeros included.
void copy_head_to_padded_maps(const float* head_value, int64_t spatial_stride, const std::vector<Level>& levels,
                              const PaddedMaps& maps, float* head_padded, int64_t channels);

// value: the caller's tensor [B, S, M, D] with contiguous channels; output [B, Q, M*D]. The padded
// variants copy one head at a time into per-thread padded maps (see ms_deform_attn_cpu_fp32.cpp).
void forward_fp32_in_place(const at::Tensor& value, const std::vector<Level>& levels, const float* locations,
                           const float* weights, float* output, const Dims& d);
void forward_fp32_padded(const at::Tensor& value, const std::vector<Level>& levels, const float* locations,
                         const float* weights, float* output, const Dims& d);

// In place: grad_value [B, S, M, D] contiguous (value must be contiguous too), zeroed by the caller.
// Padded: grad_value [B, S, M, D] contiguous, any contents (every element is written).
void backward_fp32_in_place(const float* grad_output, const at::Tensor& value, const std::vector<Level>& levels,
                            const float* locations, const float* weights, float* grad_value, float* grad_locations,
                            float* grad_weights, const Dims& d);
void backward_fp32_padded(const float* grad_output, const at::Tensor& value, const std::vector<Level>& levels,
                          const float* locations, const float* weights, float* grad_value, float* grad_locations,
                          float* grad_weights, const Dims& d);

}  // namespace msda
