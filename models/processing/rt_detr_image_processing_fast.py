"""``RTDetrImageProcessorFast``: the RT-DETR image processor on torch tensors (torchvision resize), CPU or GPU.

Same options and post-processing as ``RTDetrImageProcessor`` (``RTDetrDefaults``) over the pipeline of
``DeformableDetrImageProcessorFast``; the numbers follow the Hugging Face ``RTDetrImageProcessorFast``
(transformers 4.57).
"""

from __future__ import annotations

from models.processing.image_processing_fast import DeformableDetrImageProcessorFast
from models.processing.rt_detr_image_processing import RTDetrDefaults


class RTDetrImageProcessorFast(RTDetrDefaults, DeformableDetrImageProcessorFast):
    """Fast RT-DETR image processor on torch tensors (also PIL images and numpy arrays), batched.

    The options of ``RTDetrDefaults`` plus the fast keywords of ``DeformableDetrImageProcessorFast``
    (``device``, ``do_convert_rgb``, ``input_data_format``, ...); ``resample`` must be nearest (0), LANCZOS
    (1), bilinear (2, default) or bicubic (3). Always returns torch tensors.
    """
