"""Lean gating: ``act(y * a [* a2] + shortcut)`` without keeping full-size tensors that backward can recompute.

A gated residual block computes ``y = BN(z)``, a gate ``a`` from ``y`` and ``act(y * a + shortcut)``. Written with
plain tensor ops, autograd keeps ``y`` (the multiply needs it for the gate's gradient) next to ``z``, which the
BatchNorm keeps anyway; two-factor gates (CA, ELA, CBAM) also keep ``y * a1``. Those are full-size activation maps,
one or two per block, about a quarter to a half more training memory than the backbone.

:func:`gated_residual` computes the same numbers in one autograd node that keeps only ``z`` (shared with the
BatchNorm, so no new memory), the per-channel BatchNorm affine and the small gates, and recomputes
``y = z * scale + (bias - mean * scale)`` in backward. The node is used only when a gradient is needed (training,
Grad-CAM); under ``torch.no_grad`` / ``inference_mode``, while tracing (TorchScript, FX, ONNX) and for
``torch.export`` the same arithmetic runs as plain tensor ops.

On the CPU these full-size passes are memory-bound and every new full-size tensor also costs its first-touch page
faults, so the eager code counts them: with ``inplace`` the gated output is written over ``y`` (nothing else keeps
it) and the last gate factor is applied with the residual addition in one ``addcmul``; in backward, a channel gate's
gradient comes from per-channel sums of ``g * z`` and ``g`` (``y`` is affine in ``z`` per channel, so it is not
recomputed) and ``grad_y`` reuses that buffer, CA / ELA work in two full-size buffers, gate gradients reduce
channels_last maps as their NHWC views (a strided NCHW reduction is many times slower), CBAM's channel x spatial
gradients are batched matrix products, and the pooling helpers (:func:`mean_hw`, :func:`strip_means`) are sums whose
backward autograd adds into the input's gradient in place. Traced graphs keep the plain formulation.

:func:`batch_norm_for_gating` runs a block's BatchNorm2d and returns what backward needs for the recomputation;
other norms (SyncBatchNorm, frozen norms, custom classes) give ``None`` and the fused node keeps ``y`` instead.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    'BNRecompute',
    'batch_norm_for_gating',
    'batch_norm_with_recompute',
    'gated_conv',
    'gated_residual',
    'hook_safe',
    'is_eager',
    'is_hooked',
    'mean_hw',
    'needs_lean_path',
    'nhwc_gates',
    'nhwc_layout',
    'relu_mean_hw',
    'scaled_channel_pool',
    'spatial_amax',
    'strip_means',
    'use_fused_path',
]


class BNRecompute(NamedTuple):
    """What recomputes a BatchNorm2d output from its input: ``y = (z - mean) * scale + bias`` per channel.

    Attributes:
        z: the BatchNorm input (kept by the BatchNorm's own autograd node anyway).
        mean: per-channel mean used by the norm (batch mean in train mode, running mean in eval), detached.
        scale: per-channel ``weight / sqrt(var + eps)``, detached.
        bias: per-channel bias (zeros without affine), detached.
    """

    z: Tensor
    mean: Tensor
    scale: Tensor
    bias: Tensor


def is_eager() -> bool:
    """Not tracing, scripting, exporting or FX-tracing: a formulation may depend on the input's memory layout."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting():
        return False
    return not torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def needs_lean_path(x: Tensor) -> bool:
    """Whether the memory-saving autograd node applies: a gradient is wanted and nothing is tracing the graph."""
    # tracing first: under torch.fx ``x.requires_grad`` is a Proxy, which cannot decide a Python ``if``
    return is_eager() and torch.is_grad_enabled() and x.requires_grad


def nhwc_layout(x: Tensor) -> bool:
    """Whether ``x`` is a 4-D channels_last tensor that is not also NCHW-contiguous (its channels are innermost)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def mean_hw(x: Tensor) -> Tensor:
    """``x.mean((2, 3))`` with the same numbers; in eager mode written as a sum divided by ``H * W``.

    The sum's backward is a broadcast view that autograd adds into the input's gradient in place, where the mean's
    materialises a full-size ``grad / (H * W)`` first. Traced graphs keep the mean (no sizes baked in as constants).
    """
    if torch.jit.is_scripting():  # on its own line: TorchScript then skips compiling the rest
        return x.mean((2, 3))
    if not is_eager():
        return x.mean((2, 3))
    return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


class _ReluMeanHW(torch.autograd.Function):
    """``relu(x).mean((2, 3))`` whose backward keeps no full-size tensor of its own (see :func:`relu_mean_hw`)."""

    @staticmethod
    def forward(ctx, x):
        ctx.x = x.detach()  # not saved for backward: an in-place ReLU of x afterwards is expected (version bump)
        return x.clamp_min(0).sum((2, 3)) / (x.shape[2] * x.shape[3])

    @staticmethod
    def backward(ctx, g):
        x = ctx.x
        del ctx.x
        scale = (g / (x.shape[2] * x.shape[3])).to(x.dtype)[:, :, None, None]
        return (x > 0) * scale


def relu_mean_hw(x: Tensor) -> Tensor:
    """``relu(x).mean((2, 3))`` for a BatchNorm output that the host block passes through a ReLU next.

    Written with plain ops, the ReLU's own output would be kept for backward: one full-size tensor per tapped map
    (attached bridge attention pools the post-ReLU maps of torchvision's blocks, whose one ReLU module runs several
    times and cannot be tapped itself). Backward needs only where ``x > 0``, which the host's ReLU keeps whether it
    runs in place or not, so this node holds a reference to ``x``'s memory (kept by the host's ReLU anyway) instead.
    Only for an ``x`` that nothing but a ReLU changes in place before backward.
    """
    if not needs_lean_path(x) or x.dim() != 4:
        return torch.relu(x).mean((2, 3))
    return _ReluMeanHW.apply(x)


def strip_means(x: Tensor) -> tuple[Tensor, Tensor]:
    """CA / ELA strip pooling: ``(x.mean(3), x.mean(2))``, shapes ``(B, C, H)`` and ``(B, C, W)``.

    On channels_last tensors eager mode reduces the NHWC view (rows of contiguous channel vectors), which is many
    times faster than reducing a strided NCHW dimension; the sums differ from ``mean`` only in rounding order. As in
    :func:`mean_hw` the means are sums divided by the size, so backward adds broadcast views in place.
    """
    if torch.jit.is_scripting():
        return x.mean(3), x.mean(2)
    if not is_eager() or not nhwc_layout(x):
        return x.mean(3), x.mean(2)
    # one NHWC view per direction: backward then adds each broadcast gradient into x's in place, where a shared
    # view would first sum the two broadcasts into a new full-size tensor
    x_h = x.permute(0, 2, 3, 1).sum(2) / x.shape[3]
    x_w = x.permute(0, 2, 3, 1).sum(1) / x.shape[2]
    return x_h.transpose(1, 2), x_w.transpose(1, 2)


def nhwc_gates(x: Tensor, a_h: Tensor, a_w: Tensor) -> tuple[Tensor, Tensor]:
    """The strip gates of a channels_last ``x`` laid out with their channels innermost too, in eager mode.

    Multiplying an NHWC map by a broadcast ``(B, C, H, 1)`` factor whose channel stride is not 1 gathers across
    memory at every element; the copy of the small factor costs a fraction of one full-size pass.
    """
    if torch.jit.is_scripting():
        return a_h, a_w
    if not is_eager() or not nhwc_layout(x):
        return a_h, a_w
    return a_h.contiguous(memory_format=torch.channels_last), a_w.contiguous(memory_format=torch.channels_last)


def is_hooked(m: nn.Module) -> bool:
    """Hooks on ``m`` (or an instance-level ``forward``) that a fused path, which skips ``m(...)``, would bypass.
    The raw ScriptModules a Python call inside a scripted model receives carry none."""
    return isinstance(m, nn.Module) and bool(m._forward_hooks or m._forward_pre_hooks or 'forward' in vars(m))


def hook_safe(out: Tensor, module: nn.Module) -> Tensor:
    """``out``, copied when ``module`` is hooked: the block's in-place residual merge would otherwise change the
    output a forward hook has just seen (and may keep, as the analysis recorders do)."""
    if torch.compiler.is_compiling():  # compiled graphs keep their own copies; guarding on hooks would recompile
        return out
    return out.clone() if is_hooked(module) else out


def use_fused_path(*modules: nn.Module | None) -> bool:
    """Whether a block may compute its gate and merge without calling ``modules`` through ``__call__``.

    Not while tracing or exporting (TorchScript, FX, ONNX, ``torch.export`` see the plain module calls), and not
    when one of the modules has forward hooks or a patched ``forward`` (analysis hooks keep firing).
    """
    if not is_eager():
        return False
    from torch.nn.modules import module as _module

    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return not any(is_hooked(m) for m in modules if m is not None)


def batch_norm_for_gating(bn: nn.Module, z: Tensor) -> tuple[Tensor, BNRecompute | None]:
    """``bn(z)`` and, when the lean gated merge can use it, the recipe to recompute the output in backward.

    For a plain :class:`torch.nn.BatchNorm2d` the norm runs through :func:`batch_norm_with_recompute`. Every other
    case calls the module itself (a hooked norm too, so its hooks fire) and returns ``None`` where it does not
    recompute: the fused node then keeps ``y``.
    """
    if type(bn) is not nn.BatchNorm2d or is_hooked(bn) or not needs_lean_path(z):  # hooks see the module call
        return bn(z), None
    return batch_norm_with_recompute(bn, z)


def batch_norm_with_recompute(bn: nn.BatchNorm2d, z: Tensor) -> tuple[Tensor, BNRecompute]:
    """What ``nn.BatchNorm2d.forward(bn, z)`` computes, plus the recipe that recomputes it from ``z`` in backward.

    In train mode the norm runs through ``torch.native_batch_norm`` (the kernel ``F.batch_norm`` dispatches to on
    the CPU), which also returns the batch mean and inverse std, with nn.BatchNorm2d's running-statistics update
    (momentum, ``num_batches_tracked``) reproduced exactly. The module's ``__call__`` is not used (no hooks fire).
    """
    c = z.shape[1]
    w = bn.weight.detach() if bn.weight is not None else z.new_ones(c)
    b = bn.bias.detach() if bn.bias is not None else z.new_zeros(c)
    if bn.training or bn.running_mean is None:
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average
                factor = 1.0 / float(bn.num_batches_tracked)
        y, mean, invstd = torch.native_batch_norm(
            z, bn.weight, bn.bias, bn.running_mean if bn.training else None,
            bn.running_var if bn.training else None, True, factor, bn.eps,
        )
        mean, invstd = mean.detach(), invstd.detach()
    else:
        y = nn.BatchNorm2d.forward(bn, z)
        mean = bn.running_mean.detach().clone()
        invstd = torch.rsqrt(bn.running_var.detach() + bn.eps)
    return y, BNRecompute(z, mean, (w * invstd).detach(), b)


def _reduce_to(t: Tensor, like: Tensor) -> Tensor:
    """Sum ``t`` over the dimensions ``like`` broadcasts (a gate's gradient), in ``like``'s dtype.

    A channels_last ``t`` summed over H and/or W only (CA / ELA strips, channel gates) is reduced as its NHWC view:
    the strided NCHW reduction is many times slower.
    """
    if like.dim() == 4 and nhwc_layout(t) and like.shape[:2] == t.shape[:2]:
        dims = [d - 1 for d in (2, 3) if like.shape[d] == 1 and t.shape[d] != 1]
        if dims:
            return t.permute(0, 2, 3, 1).sum(dims, keepdim=True).permute(0, 3, 1, 2).to(like.dtype)
    return t.sum_to_size(like.shape).to(like.dtype)


def _recompute(src: Tensor, mean: Tensor, scale: Tensor, bias: Tensor, dtype: torch.dtype) -> Tensor:
    """The BatchNorm output from its input in one pass, ``z * scale + (bias - mean * scale)``."""
    shape = (1, -1) + (1,) * (src.ndim - 2)
    return torch.addcmul((bias - mean * scale).view(shape), src, scale.view(shape)).to(dtype)


def _plain(
        y: Tensor, a1: Tensor, a2: Tensor | None, shortcut: Tensor | None, relu: bool, inplace: bool = False,
) -> Tensor:
    """The reference arithmetic: ``y * a1 [* a2] [+ shortcut]``, then ReLU; ``inplace`` overwrites ``y``.

    Written as the module calls compute it (the gated output, then an in-place addition), not as one ``addcmul``, so
    that eager runs and traced graphs (FX, TorchScript, export), which call the modules, give bitwise the same numbers.
    """
    out = y.mul_(a1) if inplace else y * a1
    if a2 is not None:
        out = out.mul_(a2) if inplace or not torch.is_grad_enabled() else out * a2  # no tensor test: FX traces this
    if shortcut is not None:
        out += shortcut
    return out.relu_() if relu else out


def _merge_in_one_pass(
        y: Tensor, a1: Tensor, a2: Tensor | None, shortcut: Tensor | None, relu: bool, inplace: bool,
) -> Tensor:
    """:func:`_plain`'s result with the last gate factor and the residual addition in one ``addcmul`` pass, so the
    gated merge makes as many full-size passes as the backbone's add (rounding differs from ``_plain`` by the fused
    multiply-add: used by the training node only, where no traced graph is compared with it)."""
    gates = (a1,) if a2 is None else (a1, a2)
    if shortcut is None or shortcut.shape != y.shape or shortcut.dtype != y.dtype or not _can_overwrite(y, gates):
        return _plain(y, a1, a2, shortcut, relu, inplace)
    if a2 is not None:  # a buffer of ours after the first factor, in place or not
        y, inplace = (y.mul_(a1) if inplace else y * a1), True
    out = torch.addcmul(shortcut, y, gates[-1], out=y) if inplace else torch.addcmul(shortcut, y, a1)
    return out.relu_() if relu else out


def _can_overwrite(y: Tensor, gates: tuple[Tensor, ...]) -> bool:
    """Whether ``y * a1 [* a2]`` has ``y``'s shape and dtype, so it can be computed in ``y``'s memory."""
    if torch.compiler.is_compiling():  # compiled graphs fuse the multiplies anyway; no in-place input there
        return False
    for a in gates:
        if a.dim() > y.dim() or any(n not in (1, m) for n, m in zip(reversed(a.shape), reversed(y.shape))):
            return False
        if torch.result_type(y, a) != y.dtype:
            return False
    return True


def _channel_spatial(y: Tensor, a1: Tensor, a2: Tensor) -> bool:
    """Whether ``y * a1 * a2`` is an NHWC map times a channel gate ``(B, C, 1, 1)`` and a spatial gate ``(B, 1, H, W)``
    of ``y``'s dtype: then both gate gradients are batched matrix products with one full-size product."""
    if not nhwc_layout(y) or a1.dim() != 4 or a2.dim() != 4 or not (y.dtype == a1.dtype == a2.dtype):
        return False
    b, c, h, w = y.shape
    return tuple(a1.shape) == (b, c, 1, 1) and tuple(a2.shape) == (b, 1, h, w)


def _channel_spatial_grads(t: Tensor, a1: Tensor, a2: Tensor) -> tuple[Tensor, Tensor]:
    """From ``t = g * y``: ``(sum_HW(t * a2), sum_C(t * a1))`` as products of the ``(B, HW, C)`` view of ``t``."""
    b, c, h, w = t.shape
    tv = t.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view for NHWC t
    grad_a1 = torch.bmm(a2.reshape(b, 1, h * w), tv).reshape(a1.shape)
    grad_a2 = torch.bmm(tv, a1.reshape(b, c, 1)).reshape(a2.shape)
    return grad_a1, grad_a2


def _precise_enough(dtype: torch.dtype) -> bool:
    """Whether gradients may come from sums over the BatchNorm input ``z`` instead of its output ``y``: single or
    double precision (the sums cancel by about ``mean / std`` of ``z``, a rounding that half precision does not
    afford)."""
    return dtype in (torch.float32, torch.float64)


def _sums_without_y(z: Tensor, g: Tensor, a: Tensor) -> bool:
    """Whether a one-factor gate's gradient may come from sums of ``g * z`` and ``g`` instead of ``g * y``: one
    precise enough dtype throughout and a gate that keeps the channel axis (the sums must not mix channels, whose
    BatchNorm affines differ)."""
    if not (z.dtype == g.dtype == a.dtype and _precise_enough(z.dtype)) or z.shape != g.shape:
        return False
    return a.dim() == z.dim() and a.shape[1] == z.shape[1] and all(n in (1, m) for n, m in zip(a.shape, z.shape))


def _free_buffer(buf: Tensor, like: Tensor, gates: tuple[Tensor | None, ...]) -> bool:
    """Whether ``buf`` can take a result of ``like``'s shape and dtype: no gate has the full shape, whose gradient
    (a sum over no dimension) would be ``buf`` itself. Not in compiled graphs, which plan their own buffers."""
    if torch.compiler.is_compiling():
        return False
    return buf.shape == like.shape and buf.dtype == like.dtype and all(a is None or a.shape != buf.shape for a in gates)


class _GatedResidual(torch.autograd.Function):
    """``relu?(y * a1 [* a2] [+ shortcut])`` that keeps the BN input instead of ``y`` for backward."""

    @staticmethod
    def forward(ctx, y, z, mean, scale, bias, a1, a2, shortcut, relu, inplace):
        out = _merge_in_one_pass(y, a1, a2, shortcut, relu, inplace)
        if inplace:  # y is recomputed in backward, so its memory holds the output
            ctx.mark_dirty(y)
        ctx.relu = relu
        ctx.has_shortcut = shortcut is not None
        ctx.has_a2 = a2 is not None
        ctx.recompute = z is not None
        ctx.y_dtype = y.dtype
        ctx.save_for_backward(z if z is not None else y, mean, scale, bias, a1, a2, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, g):
        src, mean, scale, bias, a1, a2, out = ctx.saved_tensors
        if ctx.relu:
            g = torch.ops.aten.threshold_backward(g, out, 0)
        grad_shortcut = g if ctx.has_shortcut and ctx.needs_input_grad[7] else None
        need_y, need_a1, need_a2 = ctx.needs_input_grad[0], ctx.needs_input_grad[5], ctx.needs_input_grad[6]
        grad_y = grad_a1 = grad_a2 = None
        spare = []  # full-size buffers of this backward that grad_y may take once the gate gradients are reduced
        if a2 is None and need_a1 and ctx.recompute and _sums_without_y(src, g, a1):
            # sum(g * y) = scale * sum(g * z) + shift * sum(g) per (sample, channel): y is not recomputed
            t = g * src  # g is also the shortcut's gradient: never written in place
            shape = (1, -1) + (1,) * (src.ndim - 2)
            grad_a1 = torch.addcmul(_reduce_to(t, a1) * scale.view(shape), _reduce_to(g, a1),
                                    (bias - mean * scale).view(shape))
            spare.append(t)
        elif need_a1 or need_a2:
            # t = g * y in the recomputed buffer
            t = _recompute(src, mean, scale, bias, ctx.y_dtype).mul_(g) if ctx.recompute else g * src
            if a2 is None:
                grad_a1 = _reduce_to(t, a1)
            elif _channel_spatial(t, a1, a2):  # CBAM: (B, C, 1, 1) x (B, 1, H, W), two matrix products
                grad_a1, grad_a2 = _channel_spatial_grads(t, a1, a2)
            else:  # CA / ELA strips: g * y * a1 in a second buffer, then g * y * a2 in place
                if need_a2:
                    buf = t * a1
                    grad_a2 = _reduce_to(buf, a2)
                    spare.append(buf)
                if need_a1:
                    grad_a1 = _reduce_to(t.mul_(a2), a1)
            spare.append(t)
        if need_y:
            into = [b for b in spare if _free_buffer(b, g, (a1, a2))]
            grad_y = torch.mul(g, a1, out=into[0]) if into else g * a1
            if a2 is not None:
                grad_y = grad_y.mul_(a2)
        return grad_y, None, None, None, None, grad_a1, grad_a2, grad_shortcut, None, None


def gated_residual(
        y: Tensor,
        gates: Tensor | tuple[Tensor, ...] | list[Tensor],
        shortcut: Tensor | None = None,
        *,
        relu: bool = False,
        recompute: BNRecompute | None = None,
        inplace: bool = False,
) -> Tensor:
    """``relu?(y * a1 [* a2] [+ shortcut])`` with the same numbers as those plain ops, lean in training.

    Args:
        y: the gated tensor (e.g. a BatchNorm output), ``(B, C, ...)``.
        gates: one or two gate factors broadcastable to ``y`` (applied in order, as ``y * a1 * a2``).
        shortcut: residual input added after gating, or ``None``.
        relu: apply ReLU to the result (post-activation residual blocks).
        recompute: from :func:`batch_norm_for_gating`: recompute ``y`` from the BatchNorm input in backward
            instead of keeping it. Without it the autograd node keeps ``y`` itself (use it where ``y`` is kept
            by another node anyway, e.g. an in-place activation's output).
        inplace: the result may overwrite ``y`` (one full-size tensor less to allocate). Only for a ``y`` that
            nothing else reads afterwards and no autograd node keeps (a gate that kept it would fail in backward):
            in training it applies only with ``recompute``.
    """
    if isinstance(gates, Tensor):
        gates = (gates,)
    if not 1 <= len(gates) <= 2:
        raise ValueError(f'gated_residual takes one or two gate factors, got {len(gates)}')
    a1, a2 = gates[0], gates[1] if len(gates) == 2 else None
    inplace = inplace and _can_overwrite(y, gates)
    if not (needs_lean_path(y) or any(needs_lean_path(a) for a in gates)):
        return _plain(y, a1, a2, shortcut, relu, inplace and not y.requires_grad)
    r = recompute if recompute is not None and recompute.z.shape == y.shape else None
    if r is None:
        return _GatedResidual.apply(y, None, None, None, None, a1, a2, shortcut, relu, False)
    return _GatedResidual.apply(y, r.z, r.mean, r.scale, r.bias, a1, a2, shortcut, relu, inplace and y.requires_grad)


def _gated_input(y: Tensor, a1: Tensor, a2: Tensor | None) -> Tensor:
    """``y * a1 [* a2]`` in one new tensor."""
    o = y * a1
    if a2 is None:
        return o
    return o.mul_(a2) if _can_overwrite(o, (a2,)) else o * a2


class _GatedConv(torch.autograd.Function):
    """``conv2d(y * a1 [* a2], weight)`` keeping ``y`` (kept by its activation anyway) instead of the gated input."""

    @staticmethod
    def forward(ctx, y, a1, a2, weight, stride, padding, groups):
        ctx.conv = (stride, padding, groups)
        ctx.save_for_backward(y, a1, a2, weight)
        return torch.nn.functional.conv2d(_gated_input(y, a1, a2), weight, None, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, g):
        y, a1, a2, weight = ctx.saved_tensors
        stride, padding, groups = ctx.conv
        o = _gated_input(y, a1, a2)
        need = ctx.needs_input_grad
        # under autocast the conv ran in g's dtype (float16 / bfloat16) while the saved weight (and gates) are float32
        grad_o, grad_w, _ = torch.ops.aten.convolution_backward(
            g, o.to(g.dtype), weight.to(g.dtype), None, list(stride), list(padding), [1, 1], False, [0, 0], groups,
            [any(need[:3]), need[3], False],
        )
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        # the recomputed input's buffer then holds the products the gate gradients reduce; grad_o (the conv's new
        # tensor) is scaled in place into grad_y
        buf = o if _free_buffer(o, y, (a1, a2)) else None
        del o
        grad_y = grad_a1 = grad_a2 = None
        if grad_o is not None:
            own = _can_overwrite(grad_o, (a1,) if a2 is None else (a1, a2))
            if a2 is not None:
                if need[2]:
                    t = y * a1 if buf is None else torch.mul(y, a1, out=buf)
                    grad_a2 = _reduce_to(t.mul_(grad_o), a2)
                grad_o = grad_o.mul_(a2) if own else grad_o * a2
            if need[1]:
                grad_a1 = _reduce_to(grad_o * y if buf is None else torch.mul(grad_o, y, out=buf), a1)
            if need[0]:
                grad_y = grad_o.mul_(a1) if own else grad_o * a1
        return grad_y, grad_a1, grad_a2, grad_w, None, None, None


def gated_conv(y: Tensor, gates: tuple[Tensor, ...] | list[Tensor], conv: nn.Conv2d) -> Tensor:
    """``conv(y * a1 [* a2])`` for a bias-free, undilated conv; in training the gated input is not kept.

    The conv needs its input for the weight gradient; this node keeps ``y`` and the small gates instead and
    recomputes the gated input in backward (one multiply). Use it where ``y`` is kept anyway, e.g. an in-place
    activation's output (MobileNetV2's hidden-width attention before the projection conv).
    """
    a1, a2 = gates[0], gates[1] if len(gates) == 2 else None
    lean = needs_lean_path(y) or any(needs_lean_path(a) for a in gates) or needs_lean_path(conv.weight)
    if not lean or conv.bias is not None or conv.dilation != (1, 1) or conv.padding_mode != 'zeros' \
            or isinstance(conv.padding, str):
        return conv(y * a1 if a2 is None else y * a1 * a2)
    return _GatedConv.apply(y, a1, a2, conv.weight, conv.stride, conv.padding, conv.groups)


class _ScaledChannelPool(torch.autograd.Function):
    """``cat([amax_C(y * a), mean_C(y * a)])`` keeping the argmax indices and the BN input instead of ``y * a``."""

    @staticmethod
    def forward(ctx, y, z, mean, scale, bias, a):
        x1 = y * a
        mx, idx = x1.max(1, keepdim=True)
        out = torch.cat([mx, x1.mean(1, keepdim=True)], dim=1)
        ctx.recompute = z is not None
        ctx.y_dtype = y.dtype
        ctx.save_for_backward(z if z is not None else y, mean, scale, bias, a, idx)
        return out

    @staticmethod
    def backward(ctx, g):
        src, mean, scale, bias, a, idx = ctx.saved_tensors
        if nhwc_layout(src) and tuple(a.shape) == (src.shape[0], src.shape[1], 1, 1) and a.dtype == src.dtype:
            return _ScaledChannelPool.backward_nhwc(ctx, g, src, mean, scale, bias, a, idx)
        channels = src.shape[1]
        # mean's gradient spread over the channels, plus max's gradient at the argmax (a unique maximum, as amax)
        gx1 = (g[:, 1:2] / channels).expand(src.shape).clone(memory_format=torch.preserve_format)
        gx1.scatter_add_(1, idx, g[:, 0:1].to(gx1.dtype))
        grad_y = gx1 * a if ctx.needs_input_grad[0] else None
        grad_a = None
        if ctx.needs_input_grad[5]:
            y = _recompute(src, mean, scale, bias, ctx.y_dtype) if ctx.recompute else src
            grad_a = _reduce_to(gx1.mul_(y), a)  # gx1 is ours; grad_y was taken from it above
        return grad_y, None, None, None, None, grad_a

    @staticmethod
    def backward_nhwc(ctx, g, src, mean, scale, bias, a, idx):
        """The same gradients for an NHWC map and a channel gate, without a full-size ``d out / d (y * a)``.

        Over the ``(B, HW, C)`` view: the mean's part of ``grad_a`` is one batched matrix product with ``y``, the
        max's part gathers ``y`` at the argmax of every pixel; ``grad_y`` is an outer product plus a scatter.
        """
        b, c, h, w = src.shape
        hw = h * w
        g_mx = g[:, 0].reshape(b, hw).to(src.dtype)
        g_mean = (g[:, 1] / c).reshape(b, hw).to(src.dtype)
        at = idx.reshape(b, hw, 1)  # the argmax channel of every pixel
        a_bc = a.reshape(b, c)
        grad_y = grad_a = None
        if ctx.needs_input_grad[0]:
            gy = g_mean.unsqueeze(2) * a_bc.unsqueeze(1)  # (B, HW, C), NHWC memory order
            gy.scatter_add_(2, at, (g_mx * a_bc.gather(1, at.squeeze(2))).unsqueeze(2))
            grad_y = gy.view(b, h, w, c).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[5]:
            if ctx.recompute and _precise_enough(src.dtype):
                # y = z * scale + shift per channel: sum_HW(g_mean * y) = scale * (g_mean @ z) + shift * sum_HW(g_mean)
                # and y at the argmax channels from z there, so y is not recomputed
                zv = src.permute(0, 2, 3, 1).reshape(b, hw, c)
                shift = bias - mean * scale
                grad_a = torch.addcmul(torch.bmm(g_mean.unsqueeze(1), zv).reshape(b, c) * scale,
                                       g_mean.sum(1, keepdim=True), shift)
                ch = at.squeeze(2)
                y_at = torch.addcmul(shift[ch], zv.gather(2, at).squeeze(2), scale[ch])
            else:
                y = _recompute(src, mean, scale, bias, ctx.y_dtype) if ctx.recompute else src
                yv = y.permute(0, 2, 3, 1).reshape(b, hw, c)
                grad_a = torch.bmm(g_mean.unsqueeze(1), yv).reshape(b, c)
                y_at = yv.gather(2, at).squeeze(2)
            grad_a.scatter_add_(1, at.squeeze(2), g_mx * y_at)
            grad_a = grad_a.reshape(a.shape).to(a.dtype)
        return grad_y, None, None, None, None, grad_a


def scaled_channel_pool(y: Tensor, a: Tensor, recompute: BNRecompute | None = None) -> Tensor:
    """CBAM's spatial descriptor of ``y * a``: ``cat([amax over C, mean over C])``, ``(B, 2, H, W)``.

    In training it keeps the argmax indices (one int64 map) and, with ``recompute``, the BatchNorm input instead
    of ``y`` and ``y * a``; the max gradient goes to the (unique) maximum, as ``amax``'s does (on exact ties amax
    splits it evenly). Elsewhere it is the plain expression.
    """
    if not (needs_lean_path(y) or needs_lean_path(a)):
        x1 = y * a
        return torch.cat([x1.amax(1, keepdim=True), x1.mean(1, keepdim=True)], dim=1)
    r = recompute if recompute is not None and recompute.z.shape == y.shape else None
    if r is None:
        return _ScaledChannelPool.apply(y, None, None, None, None, a)
    return _ScaledChannelPool.apply(y, r.z, r.mean, r.scale, r.bias, a)


class _SpatialMax(torch.autograd.Function):
    """``x.amax((2, 3))`` keeping the argmax indices (one per channel) instead of ``x`` for backward."""

    @staticmethod
    def forward(ctx, x):
        # the pooling kernel walks channels_last maps in memory order (an NCHW-strided max with indices does not)
        mx, idx = torch.nn.functional.adaptive_max_pool2d(x, 1, return_indices=True)
        ctx.shape = x.shape
        ctx.channels_last = nhwc_layout(x)
        ctx.save_for_backward(idx)
        return mx.flatten(1)

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        b, c, h, w = ctx.shape
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        gx = torch.empty(ctx.shape, dtype=g.dtype, device=g.device, memory_format=fmt).zero_()
        gx.view(b, c, h * w).scatter_(2, idx.reshape(b, c, 1), g.reshape(b, c, 1))
        return gx


def spatial_amax(x: Tensor) -> Tensor:
    """``x.amax((2, 3))`` whose backward keeps the argmax indices instead of ``x`` in training."""
    if torch.jit.is_scripting():
        return x.amax((2, 3))
    if not needs_lean_path(x):
        return x.amax((2, 3))
    return _SpatialMax.apply(x)
