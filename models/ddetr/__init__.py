"""Deformable DETR (Zhu et al., ICLR 2021): config, the assembly over ``detr_blocks``, outputs,
the paper's variants and checkpoint conversion (Hugging Face and original layouts)."""
