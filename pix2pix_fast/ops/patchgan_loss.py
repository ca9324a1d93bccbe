"""Fused PatchGAN loss: mean GAN loss over a patch map and its gradient in one pass.

Design trade-off
----------------
The forward kernel reads each logit once, computes the per-patch loss and, in
the same pass, d(loss_i)/d(logit_i) (unscaled, in the logits' dtype), which it
saves for backward; the backward kernel then only multiplies the saved
gradient by ``grad_output / numel``.  Bytes per patch (dtype size s):
forward s (read) + s (write the gradient); backward s + s.  Recomputing in
backward instead would save the forward write but read the logits again and
redo the target draws, i.e. the same bytes plus more arithmetic.  The saved
gradient is unscaled so that fp16 keeps its precision on large maps (a
gradient pre-scaled by 1/57600 would fall into fp16's subnormal range); the
gradient is only written when autograd will need it (``need_grad``).

The loss value is a deterministic fp32 reduction: maps with up to
``_SINGLE_PROGRAM_MAX`` patches (batch 16 of 30x30) are reduced by a single
program (one launch), larger maps by per-program partial sums in fixed order
and a tiny second kernel that adds the partials in fixed order.

Targets: real = ``real_label`` (or, for the discriminator, a per-patch draw
from U[lo, hi] when ``smoothing=(lo, hi)``, or the fixed value when
``smoothing`` is a float); fake = 0.  Label flipping swaps a whole sample's
real/fake target with probability ``flip_prob`` (a flipped fake sample gets
the real, possibly smoothed, target).  The generator's loss
(``for_discriminator=False``) never smooths or flips.

Randomness (CUDA-graph capturable): the op wrapper draws a 62-bit seed into a
(1,) int64 *device* tensor with ``torch.randint`` from torch's default
generator; the kernel reads the seed from memory and draws with Triton's
Philox: ``tl.rand(seed, patch)`` (word 0 of ``tl.randint4x(seed, patch)``)
for smoothing and word 1 of ``tl.randint4x(seed, sample)`` for flipping.
Under CUDA-graph capture ``torch.randint`` is recorded with the generator's
graph-safe Philox offset, so every replay draws a fresh seed and fresh noise;
under ``torch.compile`` it is an ordinary traced random op.
``patchgan_targets_ref`` reproduces the draws bit for bit in PyTorch from the
same seed tensor (``randint4x_ref``, a port of Triton's ``randint4x``), so
the reference and the kernel see identical targets.

Hinge has no targets: ``real_label`` and ``smoothing`` do not apply to it
(as in ``pix2pix_fast.train.losses``); ``flip_prob`` swaps the real/fake term
per sample.  The generator's hinge loss is ``-mean(x)`` whatever
``target_is_real`` says.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from pix2pix_fast.ops._common import Launch, Ptr, cdiv, make_launch, next_power_of_2, run_launch, use_triton
from pix2pix_fast.ops._common import tl, triton

__all__ = ["patchgan_loss", "patchgan_loss_ref", "patchgan_targets_ref", "gan_loss_from_targets", "randint4x_ref", "draw_seed", "MODES"]

MODES = {"vanilla": 0, "lsgan": 1, "hinge": 2}

# Triton's Philox-4x32-10 (triton/language/random.py), ported to PyTorch below.
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
_UNIFORM_SCALE = 4.6566127342e-10  # tl.uint_to_uniform_float's: largest s with (2**31 - 1) * s < 1 in fp32
# Which of the four words of tl.randint4x(seed, index) a draw uses: smoothing
# draws word 0 at the patch index (what tl.rand(seed, patch) returns), flipping
# word 1 at the sample index, so that the two never share a word.
_WORD_SMOOTH = 0
_WORD_FLIP = 1

_SINGLE_PROGRAM_MAX = 16384  # patches reduced by one program (one launch)
_BLOCK = 1024
_MAX_PARTIALS = 1024


# --------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------


def _mulhilo32(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a * b) >> 32 and (a * b) & 0xFFFFFFFF for a 32-bit constant and int64 b in [0, 2**32)."""
    p_lo = a * (b & 0xFFFF)  # < 2**48
    p_hi = a * (b >> 16)  # < 2**48
    mid = p_hi + (p_lo >> 16)  # < 2**49
    return mid >> 16, ((mid & 0xFFFF) << 16) | (p_lo & 0xFFFF)


def randint4x_ref(seed: torch.Tensor, offset: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """``tl.randint4x(seed, offset)`` in PyTorch: four uint32 words per offset (as int64 in [0, 2**32)).

    Triton's convention: the counter is (offset low 32 bits, offset high 32
    bits, 0, 0), the key (seed low 32 bits, seed high 32 bits), ten rounds of
    ``philox_impl``.  ``seed``: a one-element integer tensor; ``offset``:
    non-negative integers below 2**31 (the kernel's int32 offsets).
    """
    seed = seed.reshape(()).to(torch.int64)
    offset = offset.to(torch.int64)
    c0 = offset & _MASK32
    c1 = (offset >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint_to_uniform_float_ref(x: torch.Tensor) -> torch.Tensor:
    """``tl.uint_to_uniform_float`` for uint32 words (int64 in [0, 2**32)): fp32 in [0, 1)."""
    x = torch.where(x >= 2**31, x - 2**32, x)  # the word as int32
    x = torch.where(x < 0, -x - 1, x)  # ~x
    return x.to(torch.float32) * _fp32_scalar(_UNIFORM_SCALE, x.device)


def _fp32_scalar(value: float, device) -> torch.Tensor:
    """`value` rounded to fp32 as the kernel's runtime argument is, as a 0-d tensor on
    `device`. Filled there (torch.full), not copied from the host as torch.tensor would
    be: a host-to-device copy is illegal while a CUDA graph is being captured."""
    return torch.full((), value, dtype=torch.float32, device=device)


def _uniform_ref(seed: torch.Tensor, offset: torch.Tensor, word: int) -> torch.Tensor:
    """The kernel's U[0, 1) draw: word ``word`` of ``tl.randint4x(seed, offset)`` made uniform."""
    return uint_to_uniform_float_ref(randint4x_ref(seed, offset)[word])


def _smoothing_range(real_label: float, smoothing) -> Tuple[float, float]:
    if smoothing is None:
        return float(real_label), float(real_label)
    if isinstance(smoothing, (int, float)):
        return float(smoothing), float(smoothing)
    lo, hi = smoothing
    return float(lo), float(hi)


def patchgan_targets_ref(
    shape: Sequence[int],
    target_is_real: bool,
    real_label: float = 1.0,
    smoothing=None,
    flip_prob: float = 0.0,
    for_discriminator: bool = True,
    seed: Optional[torch.Tensor] = None,
    device=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The per-patch fp32 targets and the per-sample effective "is real" flags (bool, (N,)).

    Draws exactly what the kernel draws for the same ``seed`` tensor.
    """
    n = int(shape[0])
    numel = 1
    for s in shape:
        numel *= int(s)
    lo, hi = _smoothing_range(real_label, smoothing)
    if not for_discriminator:
        flip_prob, lo, hi = 0.0, float(real_label), float(real_label)
    is_real = torch.full((n,), bool(target_is_real), device=device)
    if flip_prob > 0:
        u = _uniform_ref(seed.to(device), torch.arange(n, device=device), _WORD_FLIP)
        is_real = is_real ^ (u < _fp32_scalar(flip_prob, device))
    if hi != lo:
        u = _uniform_ref(seed.to(device), torch.arange(numel, device=device), _WORD_SMOOTH)
        real_t = _fp32_scalar(lo, device) + _fp32_scalar(hi - lo, device) * u
    else:
        real_t = torch.full((numel,), lo, dtype=torch.float32, device=device)
    real_t = real_t.reshape(shape)
    real_b = is_real.reshape((n,) + (1,) * (len(shape) - 1))
    return torch.where(real_b, real_t, torch.zeros_like(real_t)), is_real


def gan_loss_from_targets(
    logits: torch.Tensor, target: Optional[torch.Tensor], is_real: Optional[torch.Tensor], mode: str,
    for_discriminator: bool = True, reduction: str = "mean",
) -> torch.Tensor:
    """The GAN loss formula, written once for every PyTorch path of the package.

    vanilla: BCE with logits against ``target`` (per patch), as
    ``t softplus(-x) + (1 - t) softplus(x)``: accurate also where a patch's
    loss is tiny (a confident, correct logit), and smooth at 0, so autograd
    gives its gradient ``sigmoid(x) - t`` everywhere; lsgan: MSE against ``target``; hinge:
    ``relu(1 - sign * logits)`` with sign +1 for the samples ``is_real``
    ((N,) bool) says are real and -1 for the others, or ``-logits`` for the
    generator. In ``logits.dtype``; ``reduction`` "mean" or "sum" over the map.
    """
    if mode == "hinge":
        if not for_discriminator:
            loss = -logits
        else:
            sign = (is_real.to(logits.dtype) * 2 - 1).reshape((-1,) + (1,) * (logits.dim() - 1))
            loss = F.relu(1 - sign * logits)
    elif mode == "vanilla":
        target = target.to(logits.dtype)
        loss = target * F.softplus(-logits) + (1 - target) * F.softplus(logits)
    elif mode == "lsgan":
        loss = (logits - target.to(logits.dtype)) ** 2
    else:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    return loss.mean() if reduction == "mean" else loss.sum()


def patchgan_loss_ref(
    logits: torch.Tensor,
    target_is_real: bool,
    mode: str = "vanilla",
    real_label: float = 1.0,
    smoothing=None,
    flip_prob: float = 0.0,
    for_discriminator: bool = True,
    *,
    seed: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Plain PyTorch, differentiable, computed in ``logits.dtype`` (fp64 in, fp64 out)."""
    target, is_real = patchgan_targets_ref(
        logits.shape, target_is_real, real_label, smoothing, flip_prob, for_discriminator, seed, logits.device
    )
    return gan_loss_from_targets(logits, target, is_real, mode, for_discriminator)


def _patchgan_loss_torch(
    logits: torch.Tensor, seed: Optional[torch.Tensor], mode: str, target_is_real: bool,
    for_discriminator: bool, lo: float, hi: float, flip_prob: float, need_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The op's PyTorch path (CPU without the interpreter): the mean loss and the unscaled
    gradient of the summed loss, in fp32."""
    x = logits.contiguous().float()
    smoothing = None if hi == lo else (lo, hi)
    target, is_real = patchgan_targets_ref(
        x.shape, target_is_real, lo, smoothing, flip_prob, for_discriminator, seed, x.device
    )

    loss = gan_loss_from_targets(x, target, is_real, mode, for_discriminator, reduction="sum") / x.numel()
    if not need_grad:
        return loss, logits.new_empty((0,))
    # The derivative of each patch's loss (the kernels compute the same).
    if mode == "vanilla":  # sigmoid(x) - t, accurate where sigmoid(x) is near 1
        s_small = torch.sigmoid(-x.abs())
        grad = torch.where(x >= 0, (1 - target) - s_small, s_small - target)
    elif mode == "lsgan":
        grad = 2 * (x - target)
    elif for_discriminator:  # hinge, D
        sign = (is_real.float() * 2 - 1).reshape((-1,) + (1,) * (x.dim() - 1))
        grad = torch.where(1 - sign * x > 0, -sign, torch.zeros_like(x))
    else:  # hinge, G
        grad = torch.full_like(x, -1.0)
    return loss, grad.to(logits.dtype)


# --------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------


@triton.jit
def _patchgan_loss_fwd_kernel(
    logits_ptr,  # (numel,) fp32/bf16/fp16, contiguous (N outermost)
    grad_ptr,  # (numel,) logits dtype: d(loss_i)/d(logit_i), unscaled; written if HAS_GRAD
    partial_ptr,  # (num_programs,) fp32 partial sums (unused when SINGLE)
    loss_ptr,  # () fp32 mean loss, written when SINGLE
    seed_ptr,  # (1,) int64 Philox key; read if HAS_SMOOTH or HAS_FLIP
    numel,  # patches in the map
    per_sample,  # patches per batch element
    chunk,  # patches per program, a multiple of BLOCK
    is_real,  # 1 if the map is scored against "real", else 0
    real_lo,  # real target (lower end of the smoothing range)
    real_scale,  # hi - lo of the smoothing range
    flip_prob,  # per-sample probability of swapping real and fake
    inv_numel,  # 1 / numel
    MODE: tl.constexpr,  # 0 vanilla (BCE), 1 lsgan (MSE), 2 hinge
    FOR_D: tl.constexpr,  # discriminator loss (hinge: relu terms) vs generator
    HAS_SMOOTH: tl.constexpr,
    HAS_FLIP: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    SINGLE: tl.constexpr,  # one program: write the mean directly
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if HAS_SMOOTH or HAS_FLIP:
        seed = tl.load(seed_ptr)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, chunk, BLOCK):
        offs = pid * chunk + start + tl.arange(0, BLOCK)
        mask = offs < numel
        x = tl.load(logits_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        real = tl.zeros([BLOCK], dtype=tl.int32) + is_real
        if HAS_FLIP:
            # One draw per sample: word 1 of Philox at the sample index.
            _, bits, _, _ = tl.randint4x(seed, offs // per_sample)
            real = tl.where(tl.uint_to_uniform_float(bits) < flip_prob, 1 - real, real)
        if MODE == 2:
            if FOR_D:
                sign = (2 * real - 1).to(tl.float32)
                margin = 1.0 - sign * x
                loss = tl.maximum(margin, 0.0)
                grad = tl.where(margin > 0.0, -sign, 0.0)
            else:
                loss = -x
                grad = tl.zeros([BLOCK], dtype=tl.float32) - 1.0
        else:
            if HAS_SMOOTH:
                # One draw per patch: word 0 of Philox at the patch index.
                t_real = real_lo + real_scale * tl.rand(seed, offs)
            else:
                t_real = tl.zeros([BLOCK], dtype=tl.float32) + real_lo
            t = tl.where(real != 0, t_real, 0.0)
            if MODE == 0:
                # softplus(x) - t*x = max(x, 0) - t*x + log1p(exp(-|x|)), stable for any |x|.
                # log1p(e) = 2 atanh(e / (2 + e)) as an odd series in v <= 1/3
                # (9 terms: relative error < 1e-8), so no log and no libdevice.
                e = tl.exp(-tl.abs(x))
                v = e / (2.0 + e)
                v2 = v * v
                p = 1.0 / 17.0
                p = p * v2 + 1.0 / 15.0
                p = p * v2 + 1.0 / 13.0
                p = p * v2 + 1.0 / 11.0
                p = p * v2 + 1.0 / 9.0
                p = p * v2 + 1.0 / 7.0
                p = p * v2 + 1.0 / 5.0
                p = p * v2 + 1.0 / 3.0
                p = p * v2 + 1.0
                loss = tl.maximum(x, 0.0) - t * x + 2.0 * v * p
                # sigmoid(x) - t without cancellation: for x >= 0 it is (1 - t) - sigmoid(-x).
                s_small = e / (1.0 + e)  # sigmoid(-|x|)
                grad = tl.where(x >= 0.0, (1.0 - t) - s_small, s_small - t)
            else:
                d = x - t
                loss = d * d
                grad = 2.0 * d
        acc += tl.where(mask, loss, 0.0)
        if HAS_GRAD:
            tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    total = tl.sum(acc, axis=0)
    if SINGLE:
        tl.store(loss_ptr, total * inv_numel)
    else:
        tl.store(partial_ptr + pid, total)


@triton.jit
def _patchgan_loss_finalize_kernel(
    partial_ptr,  # (num_partials,) fp32
    loss_ptr,  # () fp32 mean loss
    num_partials,
    inv_numel,  # 1 / numel
    BLOCK: tl.constexpr,  # >= num_partials
):
    offs = tl.arange(0, BLOCK)
    p = tl.load(partial_ptr + offs, mask=offs < num_partials, other=0.0)
    tl.store(loss_ptr, tl.sum(p, axis=0) * inv_numel)


@triton.jit
def _patchgan_loss_bwd_kernel(
    grad_saved_ptr,  # (numel,) logits dtype: unscaled d(loss_i)/d(logit_i)
    grad_out_ptr,  # () fp32 d(out)/d(loss), read on the device
    grad_in_ptr,  # (numel,) logits dtype: d(out)/d(logits)
    numel,
    inv_numel,  # 1 / numel
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    scale = tl.load(grad_out_ptr).to(tl.float32) * inv_numel
    g = tl.load(grad_saved_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(grad_in_ptr + offs, (g * scale).to(grad_in_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------


def plan_patchgan_loss(
    shape: Sequence[int], dtype: torch.dtype, mode: str, target_is_real: bool, for_discriminator: bool,
    lo: float, hi: float, flip_prob: float, need_grad: bool, has_seed: bool,
) -> List[Launch]:
    """The launches of the forward op for logits of ``shape`` and ``dtype`` (no tensor needed).

    ``has_seed``: a seed tensor is passed (the kernel reads it only to smooth or flip).

    The forward kernel's partial sums (``partial_ptr``) are a workspace of
    ``grid[0]`` fp32 values when there are two launches.
    """
    numel = 1
    for d in shape:
        numel *= int(d)
    assert numel < 2**31, "patch maps beyond 2**31 elements are not supported"
    has_flip = for_discriminator and flip_prob > 0
    has_smooth = for_discriminator and hi != lo and mode != "hinge"
    if numel <= _SINGLE_PROGRAM_MAX:
        block = max(128, min(_BLOCK, next_power_of_2(numel)))
        programs, chunk = 1, cdiv(numel, block) * block
    else:
        block = _BLOCK
        programs = min(cdiv(numel, 4 * block), _MAX_PARTIALS)
        chunk = cdiv(cdiv(numel, programs), block) * block
        programs = cdiv(numel, chunk)
    f32 = Ptr(torch.float32)
    # Unused pointers get a tensor that is there anyway: the logits for the
    # gradient, the loss for the seed.
    fwd = make_launch(
        _patchgan_loss_fwd_kernel, (programs,),
        dict(
            logits_ptr=Ptr(dtype), grad_ptr=Ptr(dtype), partial_ptr=f32, loss_ptr=f32,
            seed_ptr=Ptr(torch.int64) if has_seed else f32,
            numel=numel, per_sample=numel // int(shape[0]), chunk=chunk, is_real=int(bool(target_is_real)),
            real_lo=float(lo), real_scale=float(hi - lo), flip_prob=float(flip_prob), inv_numel=1.0 / numel,
        ),
        dict(MODE=MODES[mode], FOR_D=bool(for_discriminator), HAS_SMOOTH=has_smooth, HAS_FLIP=has_flip,
             HAS_GRAD=bool(need_grad), SINGLE=programs == 1, BLOCK=block),
        num_warps=4,
    )
    if programs == 1:
        return [fwd]
    fin = make_launch(
        _patchgan_loss_finalize_kernel, (1,),
        dict(partial_ptr=f32, loss_ptr=f32, num_partials=programs, inv_numel=1.0 / numel),
        dict(BLOCK=max(128, next_power_of_2(programs))), num_warps=4,
    )
    return [fwd, fin]


def plan_patchgan_loss_backward(numel: int, dtype: torch.dtype) -> Launch:
    """The launch of the backward op for a saved gradient of ``numel`` elements of ``dtype``."""
    return make_launch(
        _patchgan_loss_bwd_kernel, (cdiv(numel, _BLOCK),),
        dict(grad_saved_ptr=Ptr(dtype), grad_out_ptr=Ptr(torch.float32), grad_in_ptr=Ptr(dtype),
             numel=numel, inv_numel=1.0 / numel),
        dict(BLOCK=_BLOCK), num_warps=4,
    )


def _launch_fwd(
    logits: torch.Tensor, seed: Optional[torch.Tensor], mode: str, target_is_real: bool,
    for_discriminator: bool, lo: float, hi: float, flip_prob: float, need_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    x = logits.contiguous()
    launches = plan_patchgan_loss(
        x.shape, x.dtype, mode, target_is_real, for_discriminator, lo, hi, flip_prob, need_grad, seed is not None
    )
    fwd = launches[0]
    if dict(fwd.constexprs)["HAS_SMOOTH"] or dict(fwd.constexprs)["HAS_FLIP"]:
        assert seed is not None and seed.numel() == 1 and seed.dtype == torch.int64
        assert seed.device == x.device
    loss = torch.empty((), dtype=torch.float32, device=x.device)
    grad = torch.empty_like(x) if need_grad else x.new_empty((0,))
    programs = fwd.grid[0]
    partials = loss if programs == 1 else torch.empty(programs, dtype=torch.float32, device=x.device)
    tensors = dict(
        logits_ptr=x, grad_ptr=grad if need_grad else x, partial_ptr=partials, loss_ptr=loss,
        seed_ptr=seed if seed is not None else loss,
    )
    for launch in launches:
        run_launch(launch, x.device, tensors)
    return loss, grad


def _launch_bwd(grad_saved: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    grad_in = torch.empty_like(grad_saved)
    go = grad_loss.to(torch.float32).contiguous()
    launch = plan_patchgan_loss_backward(grad_saved.numel(), grad_saved.dtype)
    run_launch(launch, grad_saved.device, dict(grad_saved_ptr=grad_saved, grad_out_ptr=go, grad_in_ptr=grad_in))
    return grad_in


# --------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------


@torch.library.custom_op("pix2pix_fast::patchgan_loss", mutates_args=())
def _patchgan_loss_op(
    logits: torch.Tensor,
    seed: Optional[torch.Tensor],
    mode: str,
    target_is_real: bool,
    for_discriminator: bool,
    real_lo: float,
    real_hi: float,
    flip_prob: float,
    need_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(mean loss fp32 (), unscaled per-patch gradient (logits' shape, contiguous) or (0,))."""
    args = (logits, seed, mode, target_is_real, for_discriminator, real_lo, real_hi, flip_prob, need_grad)
    if use_triton(logits):
        return _launch_fwd(*args)
    return _patchgan_loss_torch(*args)


@_patchgan_loss_op.register_fake
def _(logits, seed, mode, target_is_real, for_discriminator, real_lo, real_hi, flip_prob, need_grad):
    loss = logits.new_empty((), dtype=torch.float32)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if need_grad else logits.new_empty((0,))
    return loss, grad


@torch.library.custom_op("pix2pix_fast::patchgan_loss_backward", mutates_args=())
def _patchgan_loss_backward_op(grad_saved: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """grad_saved * grad_loss / numel, in grad_saved's dtype."""
    if use_triton(grad_saved):
        return _launch_bwd(grad_saved, grad_loss)
    return (grad_saved.float() * (grad_loss.float() / grad_saved.numel())).to(grad_saved.dtype)


@_patchgan_loss_backward_op.register_fake
def _(grad_saved, grad_loss):
    return torch.empty_like(grad_saved)


def _setup_context(ctx, inputs, output):
    logits = inputs[0]
    ctx.shape = logits.shape
    ctx.need_grad = inputs[-1]
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, _grad_of_saved_grad):
    if not ctx.need_grad:
        raise RuntimeError("patchgan_loss was called with need_grad=False; it has no gradient to give")
    (grad_saved,) = ctx.saved_tensors
    grad_logits = _patchgan_loss_backward_op(grad_saved, grad_loss).reshape(ctx.shape)
    # Gradients for (logits, seed, mode, target_is_real, for_discriminator,
    # real_lo, real_hi, flip_prob, need_grad): only logits has one.
    return grad_logits, None, None, None, None, None, None, None, None


_patchgan_loss_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------
# Functional wrapper
# --------------------------------------------------------------------------


def draw_seed(device) -> torch.Tensor:
    """A fresh (1,) int64 Philox seed on ``device`` from torch's default generator (capturable)."""
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def _check(mode, smoothing, flip_prob):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if not 0.0 <= float(flip_prob) <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    if smoothing is not None and not isinstance(smoothing, (int, float)):
        if len(smoothing) != 2 or not float(smoothing[0]) <= float(smoothing[1]):
            raise ValueError(f"smoothing must be None, a float or a (lo, hi) pair with lo <= hi, got {smoothing!r}")


def patchgan_loss(
    logits: torch.Tensor,
    target_is_real: bool,
    mode: str = "vanilla",
    real_label: float = 1.0,
    smoothing: Union[None, float, Tuple[float, float]] = None,
    flip_prob: float = 0.0,
    for_discriminator: bool = True,
    *,
    seed: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean GAN loss over a patch map (N, ...) as an fp32 scalar, differentiable w.r.t. ``logits``.

    ``seed``: optional (1,) int64 tensor on ``logits.device`` for the smoothing
    and flipping draws (to reproduce them); by default a fresh one is drawn on
    the device from torch's generator on every call.
    """
    _check(mode, smoothing, flip_prob)
    if not logits.is_floating_point() or logits.dim() < 1 or logits.numel() == 0:
        raise ValueError(
            f"logits must be a non-empty floating tensor (N, ...), got {tuple(logits.shape)} {logits.dtype}"
        )
    lo, hi = _smoothing_range(real_label, smoothing)
    if not for_discriminator:  # the generator's loss never smooths or flips
        lo = hi = float(real_label)
        flip_prob = 0.0
    if mode == "hinge":  # hinge has no targets
        lo = hi = 1.0
    if seed is None and (hi != lo or flip_prob > 0):
        seed = draw_seed(logits.device)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, _ = _patchgan_loss_op(
        logits, seed, mode, bool(target_is_real), bool(for_discriminator), lo, hi, float(flip_prob), need_grad
    )
    return loss
