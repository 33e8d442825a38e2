"""Analysis tools: model cost against the plain backbone, Grad-CAM maps, gate correlations, result plots.

* :mod:`.complexity`: parameters, MACs (specs D11), interleaved inference / training-step timing and peak memory
  (``plugattn bench``);
* :mod:`.gradcam`: class-activation maps overlaid on images with the ``grad-cam`` package (``plugattn cam``);
* :mod:`.attn_corr`: gate values of every attention module over real images and their correlation between the
  layers of a stage (``plugattn attn-corr``);
* :mod:`.plots`: the figures, with one colour per attention type.

Training several models x seeds and tabulating them is the experiment runner, :mod:`plugattn.experiments`.

Optional packages (``plugattn[viz]``: matplotlib, grad-cam, scikit-image) are imported only inside the functions
that need them; a missing one raises :class:`AnalysisError` naming the extra to install.
"""
from ._common import AnalysisError, load_model
from .attn_corr import CorrReport, GateRecorder, attn_correlation, collect_gates, gate_correlation, pearson_matrix
from .complexity import MACS_NOTE, MEMORY_NOTE, BenchRecord, benchmark, count_macs, count_params, format_records
from .gradcam import CAM_METHODS, CamResult, compute_cam, default_target_layer, run_cam
from .plots import attn_color, attn_label

__all__ = [
    'CAM_METHODS',
    'MACS_NOTE',
    'MEMORY_NOTE',
    'AnalysisError',
    'BenchRecord',
    'CamResult',
    'CorrReport',
    'GateRecorder',
    'attn_color',
    'attn_correlation',
    'attn_label',
    'benchmark',
    'collect_gates',
    'compute_cam',
    'count_macs',
    'count_params',
    'default_target_layer',
    'format_records',
    'gate_correlation',
    'load_model',
    'pearson_matrix',
    'run_cam',
]
