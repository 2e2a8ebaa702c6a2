"""The vectorised fp32 CPU kernels (D a multiple of 8) against the fp64 reference.

They have two layouts: value read in place (few queries: Q·L·P < S) and padded head-major maps
(the encoder: Q·L·P >= S). Every case runs both, with locations partly off the map and point counts
that do not fill the eight vector lanes.
"""

from __future__ import annotations

import pytest
import torch

import msda
from msda import ms_deform_attn, ms_deform_attn_reference
from tests.msda_inputs import level_tensors, output_and_grads, random_inputs

pytestmark = pytest.mark.skipif(
    msda.active_implementation("cpu").name != "compiled-cpu",
    reason=f"compiled CPU kernel unavailable: {msda.active_implementation('cpu').reason}",
)

SHAPES = [(9, 11), (5, 6), (3, 3), (1, 2)]


def _compare(inputs, grad_output, gradient_atol: float = 1e-4):
    ours, our_grads = output_and_grads(ms_deform_attn, inputs, grad_output)
    as64 = [t.double() if t.is_floating_point() else t for t in inputs]
    ref, ref_grads = output_and_grads(ms_deform_attn_reference, as64, grad_output.double())
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)
    for name, mine, theirs in zip(("value", "sampling_locations", "attention_weights"), our_grads, ref_grads):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(
            mine.double(), theirs, rtol=1e-4, atol=gradient_atol, msg=lambda m, n=name: f"grad {n}: {m}"
        )


@pytest.mark.parametrize("queries", [3, 400], ids=["in-place", "padded-maps"])
@pytest.mark.parametrize(
    "channels, levels, points, heads, batch",
    [(8, 2, 3, 2, 2), (16, 1, 1, 3, 1), (24, 3, 3, 2, 1), (32, 4, 4, 8, 1), (64, 2, 5, 1, 2), (40, 4, 2, 3, 1)],
)
def test_matches_fp64_reference(queries, channels, levels, points, heads, batch):
    shapes = SHAPES[:levels]
    total = sum(h * w for h, w in shapes)
    assert (queries * levels * points >= total) == (queries == 400)  # each id runs the layout it names
    inputs = random_inputs(batch, shapes, queries, heads, channels, points, dtype=torch.float32, seed=channels)
    grad_output = torch.randn(batch, queries, heads * channels, generator=torch.Generator().manual_seed(channels))
    _compare(inputs, grad_output)


@pytest.mark.parametrize("queries", [3, 400], ids=["in-place", "padded-maps"])
def test_strided_value_layouts(queries):
    value, shapes, starts, locations, weights = random_inputs(2, SHAPES[:3], queries, 4, 16, 2, dtype=torch.float32)
    grad_output = torch.randn(2, queries, 64, generator=torch.Generator().manual_seed(1))
    head_major = value.transpose(1, 2).contiguous().transpose(1, 2)  # [B, S, M, D] view of [B, M, S, D]
    wide = torch.zeros(2, value.shape[1], 4, 20)
    wide[..., 2:18] = value
    for layout in (head_major, wide[..., 2:18]):
        assert not layout.is_contiguous()
        _compare((layout, shapes, starts, locations, weights), grad_output)


@pytest.mark.parametrize("queries", [2, 200], ids=["in-place", "padded-maps"])
def test_points_off_the_map_never_read_it(queries):
    """A point just outside the map must read zeros only, even next to non-finite values; a NaN
    location gives a NaN row (as the reference), not zeros."""
    shapes, starts = level_tensors([(4, 5)])
    value = torch.randn(1, 20, 1, 8, generator=torch.Generator().manual_seed(4))
    value[0, 0] = float("inf")  # pixel (0, 0)
    locations = torch.empty(1, queries, 1, 1, 1, 2)
    locations[..., 0] = -1.2 / 5  # pixel x = -1.7: left of the map, beside pixel (0, 0)
    locations[..., 1] = 0.5 / 4  # pixel row 0
    locations[:, 1::2, ..., 0] = float("nan")
    weights = torch.ones(1, queries, 1, 1, 1)
    output = ms_deform_attn(value, shapes, starts, locations, weights)
    assert torch.equal(output[:, ::2], torch.zeros_like(output[:, ::2]))
    assert output[:, 1::2].isnan().all()
    reference = ms_deform_attn_reference(value.double(), shapes, starts, locations.double(), weights.double())
    torch.testing.assert_close(output.double(), reference, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_padded_maps_per_thread_buffers(threads):
    """Padded maps are copied one (batch, head) at a time into per-thread buffers: calls of growing
    and shrinking map sizes reuse them, and a single head is split among the threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shapes, heads, batch in (([(9, 11), (5, 6)], 1, 1), ([(20, 30), (10, 15)], 2, 1), ([(3, 3)], 3, 2)):
            queries = 2 * sum(h * w for h, w in shapes)
            inputs = random_inputs(batch, shapes, queries, heads, 16, 2, dtype=torch.float32, seed=heads)
            grad_output = torch.randn(batch, queries, heads * 16, generator=torch.Generator().manual_seed(5))
            _compare(inputs, grad_output)
    finally:
        torch.set_num_threads(previous)


def test_locations_on_the_border_rows():
    """Points in the outer half-pixel of each side use the zero border of the padded maps."""
    shapes, starts = level_tensors([(3, 4)])
    generator = torch.Generator().manual_seed(2)
    value = torch.randn(1, 12, 2, 8, generator=generator)
    x = torch.tensor([-0.45, 0.1, 3.3, 3.45, -0.2, 2.05]) + 0.5  # pixel x -> normalized below
    y = torch.tensor([0.3, -0.4, 1.2, 2.45, 2.3, -0.1]) + 0.5
    locations = torch.stack([x / 4, y / 3], -1).view(1, 1, 1, 1, 6, 2).expand(1, 40, 2, 1, 6, 2).contiguous()
    weights = torch.rand(1, 40, 2, 1, 6, generator=generator)
    _compare((value, shapes, starts, locations, weights), torch.randn(1, 40, 16, generator=generator))


def test_outputs_of_32_mib_and_more():
    """Outputs this large take the huge-page hint before they are written (Linux); same numbers."""
    inputs = random_inputs(1, [(20, 30)], 65536, 4, 32, 16, dtype=torch.float32, seed=3)
    grad_output = torch.randn(1, 65536, 128, generator=torch.Generator().manual_seed(3))
    output = ms_deform_attn(*inputs)
    assert output.nbytes >= 32 * 2**20
    assert inputs[3].nbytes >= 32 * 2**20  # grad_locations will be as large
    # location gradients are differences of 32-term fp32 dot products (about 0.1 here): among
    # 8 million of them a few differ from fp64 by 1e-4
    _compare(inputs, grad_output, gradient_atol=1e-3)


def test_outputs_reuse_freed_memory_and_stay_ordinary_tensors():
    """Outputs come from a recycling allocator: a freed output's block serves the next call."""
    inputs = random_inputs(1, SHAPES[:2], 300, 2, 16, 2, dtype=torch.float32)
    first = ms_deform_attn(*inputs)
    address, expected = first.data_ptr(), first.clone()
    del first
    second = ms_deform_attn(*inputs)
    assert second.data_ptr() == address
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    second.resize_(2, 300, 64).fill_(1.0)  # resizable like any CPU tensor
    assert second.sum().item() == 2 * 300 * 64
