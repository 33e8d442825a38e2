"""The diffusion demo: a small DDPM UNet with an optional DIA unit per resolution level (``plugattn diffusion-demo``).

* :mod:`.unet`: :class:`DiffusionUNet`, the noise predictor;
* :mod:`.ddpm`: the DDPM forward process and loss, DDIM sampling and the short training loop;
* :mod:`.demo`: the whole demo run (data, training, sampling, output files), which the command line calls.
"""
from .ddpm import DiffusionHistory, GaussianDiffusion, infinite_batches, train_diffusion
from .unet import DiffusionUNet, ResBlock, timestep_embedding

__all__ = [
    'DiffusionHistory',
    'DiffusionUNet',
    'GaussianDiffusion',
    'ResBlock',
    'infinite_batches',
    'timestep_embedding',
    'train_diffusion',
]
