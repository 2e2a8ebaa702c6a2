"""CPU int8 detectors: :func:`quantize` a float detector with calibration images, run it like the
model, save and load it (``docs/quantization.md``).

``torchao`` (PyTorch's quantization library) is imported only when a model is quantized or saved.
"""

from models.quantization.artifact import is_quantized_checkpoint, load_quantized, save_quantized
from models.quantization.calibrate import calibration_from_images
from models.quantization.cpu_support import QuantizationUnsupported, check_cpu_support
from models.quantization.detector import QuantizedDetectionOutput, QuantizedDetector
from models.quantization.pt2e import quantize
from models.quantization.recipe import QuantizationRecipe
from models.quantization.workflow import quantize_to_folder

__all__ = [
    "QuantizationRecipe",
    "QuantizationUnsupported",
    "QuantizedDetectionOutput",
    "QuantizedDetector",
    "calibration_from_images",
    "check_cpu_support",
    "is_quantized_checkpoint",
    "load_quantized",
    "quantize",
    "quantize_to_folder",
    "save_quantized",
]
