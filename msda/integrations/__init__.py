"""Ways to run msda's op inside other code bases.

- :mod:`msda.integrations.hf`: ``enable(model)`` / ``disable(model)`` for Hugging Face
  ``transformers`` models (imports ``transformers`` only when called).
- :mod:`msda.integrations.mmcv`: ``MultiScaleDeformableAttention``, a drop-in for the layer of
  mmcv and detrex (needs neither).

Nothing is imported here, so ``import msda.integrations`` stays cheap and needs no extra package.
"""
