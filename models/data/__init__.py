"""Datasets: COCO-format reading, training augmentation, synthetic data."""
