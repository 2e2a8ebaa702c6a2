"""RT-DETR (Zhao et al., CVPR 2024) assembled from the blocks: config, models, variants, family entry."""
