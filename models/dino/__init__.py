"""DINO (Zhang et al., ICLR 2023): config, the assembly over ``detr_blocks`` (mixed query selection,
contrastive denoising, look-forward-twice refinement, conditional query positions), outputs, loss,
the two published configurations and the original checkpoints' conversion."""
