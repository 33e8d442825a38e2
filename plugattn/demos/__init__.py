"""Demonstrations of plug-in attention outside image classification, each in its own sub-package.

* :mod:`.diffusion`: a small DDPM UNet with one DIA unit per resolution level (``plugattn diffusion-demo``).
"""
