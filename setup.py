"""Installs msda, detr_blocks and models, and ships csrc/ inside msda (as msda/csrc).

Nothing is compiled here and torch is not imported: the extension is JIT-built on first use.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="deformable-detr-msda",
    version="0.1.0",
    description="Fast multi-scale deformable attention (CPU and CUDA), DETR building blocks and Deformable DETR models",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=["msda", "msda.*", "detr_blocks", "detr_blocks.*", "models", "models.*"]), "msda.csrc"],
    package_dir={"msda.csrc": "csrc"},
    package_data={
        "models.cli": ["demo_checkpoint/*.json", "demo_checkpoint/*.jsonl", "demo_checkpoint/*.safetensors"],
        "msda.csrc": ["*.cpp", "*.h", "cpu/*.cpp", "cpu/*.h", "cuda/*.cu", "cuda/*.cuh", "cuda/*.h"],
    },
    include_package_data=False,
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "numpy",
        "scipy",
        "pybind11",
        "ninja",
        "pillow",
        "safetensors",
        "tqdm",
        "pycocotools",
    ],
    extras_require={
        "test": [
            "pytest",
            "transformers==4.57.6",
            "onnx",
            "onnxruntime",
            "onnxscript==0.7.2",
            "onnx-ir",
            "scikit-image",
            "timm",
            "accelerate",
            "ruff==0.17.6",
            "torchao==0.18.0",
        ],
        "int8": ["torchao==0.18.0"],
        "hf": ["transformers>=4.57", "huggingface_hub"],  # msda.integrations.hf, Trainer, Hub repo ids
        "bench": ["matplotlib"],
    },
    entry_points={"console_scripts": ["deformable-detr=models.cli.main:main"]},
)
