"""Box outlines in the annotated PNGs contrast with what they frame (WCAG contrast ratio, written out here)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models.engine.detection_io import class_colour, contrasting_colour, draw_detections, mean_outline_colour

MIN_RATIO = 4.5
"""WCAG's threshold for normal text; black or white reaches at least sqrt(21) ~ 4.58 on any colour."""


def luminance(colour) -> float:
    """WCAG 2.1 relative luminance, from its definition."""
    channels = []
    for value in colour[:3]:
        c = value / 255
        channels.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = channels
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ratio(a, b) -> float:
    la, lb = luminance(a), luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


FILLS = [(0, 0, 0), (255, 255, 255), (118, 118, 118), (255, 255, 0), (0, 0, 255), (200, 30, 30)] + [class_colour(k) for k in range(6)]


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("label", [0, 1, 2])
def test_outline_contrasts_with_a_uniform_image(fill, label):
    """On an image of one colour (including each class's own colour), the pixels of the outline next to
    the image, outside and inside the frame, contrast with it by at least MIN_RATIO."""
    image = Image.new("RGB", (64, 64), fill)
    record = {"detections": [{"label": "thing", "label_id": label, "score": 0.9, "box": [16.0, 20.0, 48.0, 52.0]}]}
    drawn = np.asarray(draw_detections(image, record))
    scale = drawn.shape[0] / 64
    row = drawn[int(36 * scale)]  # the middle of the box: only its left and right edges cross this row
    left_edge = int(16 * scale)
    outside = next(x for x in range(left_edge - 20, left_edge + 20) if tuple(row[x]) != fill)
    inside = next(x for x in range(left_edge + 20, left_edge - 20, -1) if tuple(row[x]) != fill)
    assert ratio(row[outside], fill) >= MIN_RATIO, (tuple(row[outside]), fill)
    assert ratio(row[inside], fill) >= MIN_RATIO, (tuple(row[inside]), fill)
    assert tuple(class_colour(label)) in {tuple(p) for p in row[outside:inside + 1]}, "the class colour is still drawn"


def test_contrasting_colour_is_the_best_of_black_and_white_on_every_background():
    for background in itertools.product(range(0, 256, 17), repeat=3):
        chosen = contrasting_colour(background)
        best = max(((0, 0, 0), (255, 255, 255)), key=lambda c: ratio(c, background))
        assert ratio(chosen, background) == pytest.approx(ratio(best, background))
        assert ratio(chosen, background) >= MIN_RATIO


def test_contrasting_colour_takes_a_palette():
    palette = [(255, 0, 0), (0, 128, 0), (20, 20, 20)]
    for background in [(250, 250, 250), (10, 10, 10), (255, 0, 0)]:
        expected = max(palette, key=lambda c: ratio(c, background))
        assert contrasting_colour(background, palette) == expected
    with pytest.raises(ValueError, match="palette"):
        contrasting_colour((0, 0, 0), [])


@pytest.mark.parametrize("box,width", [((5, 7, 30, 22), 1), ((5, 7, 30, 22), 3), ((-4, 10, 20, 50), 2), ((0, 0, 39, 35), 4), ((12, 12, 17, 17), 3), ((12, 12, 18, 16), 2)])
def test_mean_outline_colour_is_the_mean_under_the_outline_pil_draws(box, width):
    pixels = np.random.default_rng(sum(box) + width).integers(0, 256, (36, 40, 3), dtype=np.uint8)
    mask = Image.new("L", (40, 36), 0)
    ImageDraw.Draw(mask).rectangle(box, outline=255, width=width)
    covered = pixels[np.asarray(mask) > 0].astype(np.float64)
    np.testing.assert_allclose(mean_outline_colour(pixels, box, width), covered.mean(axis=0), rtol=0, atol=1e-9)


def test_mean_outline_colour_checks_its_arguments():
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="pixels"):
        mean_outline_colour(np.zeros((8, 8)), (0, 0, 4, 4), 1)
    with pytest.raises(ValueError, match="box"):
        mean_outline_colour(pixels, (0, 0, 4), 1)
    with pytest.raises(ValueError, match="width"):
        mean_outline_colour(pixels, (0, 0, 4, 4), 0)
