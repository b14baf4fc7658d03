"""Classifier-free guidance (Ho & Salimans 2022): one network, trained with labels sometimes replaced by a
null label, steered at sampling time by mixing its conditional and unconditional predictions.

Convention (the one of the paper's code, diffusers and most libraries):
    eps = eps_uncond + w (eps_cond - eps_uncond) = (1 - w) eps_uncond + w eps_cond
    w = 0  unconditional,   w = 1  plain conditional,   w > 1  guided (typical 2 to 8 for class labels).
(Ho & Salimans write the same rule with w' = w - 1: eps = (1 + w') eps_cond - w' eps_uncond.)
The second form is the one evaluated: it reproduces the conditional prediction exactly at w = 1 and the
unconditional one exactly at w = 0 (the first form would leave round-off).

The same mix applies unchanged to x0- or v-predicting models: at fixed x_t and t, eps, x0 and v are affine
functions of each other (forward_process.py), and an affine map commutes with a mix whose weights sum to one.

``GuidedModel`` wraps a conditional model into a guided one with the sampler's signature model(x_t, t, labels):
it stacks the batch twice, [x_t; x_t] with labels [labels; null_label], evaluates both halves in one call,
and mixes them. At w = 1 (or 0) only the conditional (or unconditional) half is evaluated.
"""
from __future__ import annotations

from ..backend import get_xp
from ..checks import is_int


def cfg_combine(cond, uncond, scale: float):
    """(1 - scale) uncond + scale cond = uncond + scale (cond - uncond)."""
    return (1.0 - scale) * uncond + scale * cond


class GuidedModel:
    """model(x_t, t, labels) with classifier-free guidance of strength ``scale`` (see the module docstring).

        guided = GuidedModel(model, scale=3.0, null_label=10)    # 10 classes, label 10 = "no class"
        x = ddim_sample(guided, schedule, (16, 1, 28, 28), labels=np.arange(16) % 10)
    """

    def __init__(self, model, scale: float, null_label: int):
        if not callable(model):
            raise TypeError(f"GuidedModel: model must be callable as model(x_t, t, labels), got {type(model).__name__}")
        if not is_int(null_label):
            raise ValueError(f"GuidedModel: null_label must be an int (the class id trained as 'no label'), "
                             f"got {null_label!r}")
        self.model, self.scale, self.null_label = model, float(scale), int(null_label)

    def __repr__(self) -> str:
        return f"GuidedModel(scale={self.scale}, null_label={self.null_label})"

    def __call__(self, x_t, t, labels):
        if labels is None:
            raise ValueError("GuidedModel: labels are required (shape (N,)): guidance mixes the prediction "
                             "for these labels with the one for the null label")
        n = x_t.shape[0]
        if tuple(labels.shape) != (n,):
            raise ValueError(f"GuidedModel: labels must have shape ({n},), got {tuple(labels.shape)}")
        xp = get_xp(x_t)
        null = xp.full((n,), self.null_label, dtype=labels.dtype)  # (N,)
        if self.scale == 1.0:
            return self.model(x_t, t, labels)
        if self.scale == 0.0:
            return self.model(x_t, t, null)
        x2 = xp.concatenate([x_t, x_t], axis=0)         # (2N, C, H, W): conditional half, then unconditional
        t2 = xp.concatenate([t, t], axis=0)             # (2N,)
        labels2 = xp.concatenate([labels, null], axis=0)  # (2N,)
        out = self.model(x2, t2, labels2)
        return cfg_combine(out[:n], out[n:], self.scale)
