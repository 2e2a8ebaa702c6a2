"""Application code over the models: training loop, COCO evaluation, detection I/O."""
