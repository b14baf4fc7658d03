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

Guidance in an interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves sample and
distribution quality"): guidance at the noisiest steps pulls every sample of a class towards the same few layouts
(less variety), and at the least noisy ones it does little; applied only for t in [lo, hi], and w = 1 (the plain
conditional prediction) elsewhere, it keeps the sharpness and gives back variety. The paper states the interval in
EDM's sigma; here it is in timesteps, sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) growing with t. Outside the
interval only the conditional half is evaluated when t can be read without waiting for a GPU (NumPy); on CuPy both
halves run and the weight is chosen per sample on the device, w where lo <= t <= hi and 1 elsewhere.

Classifier guidance (Dhariwal & Nichol 2021): a separate classifier p_phi(y | x_t, t), trained on noisy images,
steers the same samplers through its gradient. The noise prediction is a scaled score,
eps(x_t, t) = -b grad_x log p_t(x_t) with b = sqrt(1 - alpha_bar_t), and the score of the tilted density
p_t(x) p_phi(y | x, t)^s is grad log p_t(x) + s grad_x log p_phi(y | x, t). So

    eps_hat = eps_theta(x_t, t, y) - s b grad_x log p_phi(y | x_t, t)          (s >= 0, the scale)

s = 0 leaves the model as it is. With the exact scores, s = 1 samples p(x | y) exactly (Bayes' rule for scores);
larger s makes the class surer, but it does not sample p(x) p(y | x)^s: p_t(x) p_t(y | x)^s is not the noised
tilted density (noising and the power do not commute), and lesson 16 measures the gap on a 1-D mixture.
The model under the gradient may be conditional or not: with a GuidedModel at w = 0 underneath, it is the
unconditional network steered by the classifier alone (the paper's unconditional ImageNet model).

A model that predicts x0 or v is corrected in its own kind. At fixed x_t, with a = sqrt(alpha_bar_t), the
conversions x0 = (x_t - b eps) / a and v = (eps - b x_t) / a are affine in eps, so moving eps by
delta = -s b g (g = grad_x log p_phi) moves the others by exactly

    x0_hat = x0 - (b / a) delta = x0 + s (b^2 / a) g          v_hat = v + delta / a = v - s (b / a) g

added directly rather than converted to eps and back (a is small at the noisiest steps, where
(eps - b x_t) / a would lose the digits that x_t and eps share).
"""
from __future__ import annotations

from ..array_checks import values_on_host
from ..backend import get_xp
from ..checks import check_choice, check_real, is_int
from .forward_process import PREDICTIONS
from .schedules import Schedule


def cfg_combine(cond, uncond, scale: float):
    """(1 - scale) uncond + scale cond = uncond + scale (cond - uncond)."""
    return (1.0 - scale) * uncond + scale * cond


class GuidedModel:
    """model(x_t, t, labels) with classifier-free guidance of strength ``scale`` (see the module docstring).

        guided = GuidedModel(model, scale=3.0, null_label=10)    # 10 classes, label 10 = "no class"
        x = ddim_sample(guided, schedule, (16, 1, 28, 28), labels=np.arange(16) % 10)

    ``interval=(lo, hi)``: guide only at timesteps lo <= t <= hi, the plain conditional prediction elsewhere
    (see the module docstring); None guides at every step.
    """

    def __init__(self, model, scale: float, null_label: int, interval=None):
        if not callable(model):
            raise TypeError(f"GuidedModel: model must be callable as model(x_t, t, labels), got {type(model).__name__}")
        if not is_int(null_label):
            raise ValueError(f"GuidedModel: null_label must be an int (the class id trained as 'no label'), "
                             f"got {null_label!r}")
        self.model, self.scale, self.null_label = model, float(scale), int(null_label)
        self.interval = check_interval("GuidedModel", interval)

    def __repr__(self) -> str:
        where = "" if self.interval is None else f", interval={self.interval}"
        return f"GuidedModel(scale={self.scale}, null_label={self.null_label}{where})"

    def __call__(self, x_t, t, labels):
        if labels is None:
            raise ValueError("GuidedModel: labels are required (shape (N,)): guidance mixes the prediction "
                             "for these labels with the one for the null label")
        n = x_t.shape[0]
        if tuple(labels.shape) != (n,):
            raise ValueError(f"GuidedModel: labels must have shape ({n},), got {tuple(labels.shape)}")
        xp = get_xp(x_t)
        null = xp.full((n,), self.null_label, dtype=labels.dtype)  # (N,)
        scale = self.scale
        if self.interval is not None and values_on_host(t):
            lo, hi = self.interval
            inside = (t >= lo) & (t <= hi)
            if not inside.any():
                return self.model(x_t, t, labels)      # w = 1 at every sample: the conditional half alone
            if not inside.all():
                scale = xp.where(inside, self.scale, 1.0).astype(x_t.dtype)[:, None, None, None]  # (N, 1, 1, 1)
        elif self.interval is not None:             # CuPy t: choose the weight per sample on the device
            lo, hi = self.interval
            scale = xp.where((t >= lo) & (t <= hi), self.scale, 1.0).astype(x_t.dtype)[:, None, None, None]
        if self.scale == 1.0:
            return self.model(x_t, t, labels)
        if self.interval is None and self.scale == 0.0:
            return self.model(x_t, t, null)
        x2 = xp.concatenate([x_t, x_t], axis=0)         # (2N, C, H, W): conditional half, then unconditional
        t2 = xp.concatenate([t, t], axis=0)             # (2N,)
        labels2 = xp.concatenate([labels, null], axis=0)  # (2N,)
        out = self.model(x2, t2, labels2)
        return cfg_combine(out[:n], out[n:], scale)


def check_interval(where: str, interval):
    """None, or (lo, hi) as two ints with 0 <= lo <= hi: the timesteps at which guidance applies."""
    if interval is None:
        return None
    try:
        lo, hi = interval
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the guidance interval must be two timesteps (lo, hi), got {interval!r}") from None
    if not (is_int(lo) and is_int(hi) and 0 <= lo <= hi):
        raise ValueError(f"{where}: the guidance interval must be two integer timesteps 0 <= lo <= hi, got {interval!r}")
    return int(lo), int(hi)


def describe_guidance(scale: float, interval=None) -> str:
    """'guidance 2', or 'guidance 2 at t in [0, 575]' with an interval: how titles and log lines name the setting."""
    words = f"guidance {float(scale):g}"
    return words if interval is None else words + " at t in [{}, {}]".format(*interval)


class ClassifierGuidedModel:
    """model(x_t, t, labels) corrected by a classifier's input gradient at scale ``scale`` (classifier guidance).

        grad = noisy_classifier.gradient_fn(classifier_params)   # grad(x_t, t, labels) -> grad_x log p(y | x_t, t)
        guided = ClassifierGuidedModel(GuidedModel(model, 0.0, null_label), grad, schedule, scale=4.0)
        x = ddim_sample(guided, schedule, (16, 1, 28, 28), labels=np.arange(16) % 10)

    ``prediction`` is what ``model`` returns ('eps', 'x0' or 'v'); the output is the same kind, corrected as in
    the module docstring, so the sampler is told the same ``prediction`` as without guidance. ``schedule`` must
    be the one the model and the classifier were trained with (it gives a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t)).
    """

    def __init__(self, model, grad_log_prob, schedule: Schedule, scale: float, prediction: str = "eps"):
        _check_classifier_guided_model(model, grad_log_prob, schedule, scale, prediction)
        self.model, self.grad_log_prob, self.schedule = model, grad_log_prob, schedule
        self.scale, self.prediction = float(scale), prediction

    def __repr__(self) -> str:
        return f"ClassifierGuidedModel(scale={self.scale}, prediction={self.prediction!r})"

    def __call__(self, x_t, t, labels):
        if self.scale == 0.0:
            return self.model(x_t, t, labels)
        _check_guided_call(x_t, t, labels)
        out = self.model(x_t, t, labels)                                        # the prediction to correct
        g = self.grad_log_prob(x_t, t, labels)                                  # (N, C, H, W) grad_x log p(y | x_t, t)
        if not hasattr(g, "shape") or tuple(g.shape) != tuple(x_t.shape):
            got = tuple(g.shape) if hasattr(g, "shape") else type(g).__name__
            raise ValueError(f"ClassifierGuidedModel: grad_log_prob returned {got} for x_t of shape "
                             f"{tuple(x_t.shape)}; it must return grad_x log p(y | x_t, t) of x_t's shape")
        b = self.schedule.gather("sqrt_one_minus_alpha_bar", t, x_t)            # (N, 1, 1, 1)
        if self.prediction == "eps":
            coef = -self.scale * b                                              # eps_hat = eps - s b g
        else:
            a = self.schedule.gather("sqrt_alpha_bar", t, x_t)                  # (N, 1, 1, 1)
            coef = self.scale * b * b / a if self.prediction == "x0" else -self.scale * b / a
        return out + coef * g.astype(out.dtype, copy=False)


# ----------------------------------------------------------------------------- argument checks

def _check_classifier_guided_model(model, grad_log_prob, schedule, scale, prediction):
    """Raise, naming ClassifierGuidedModel, unless both callables are callable, schedule is a Schedule, scale a
    finite number >= 0 and prediction one of PREDICTIONS."""
    where = "ClassifierGuidedModel"
    for name, value in (("model", model), ("grad_log_prob", grad_log_prob)):
        if not callable(value):
            raise TypeError(f"{where}: {name} must be callable as {name}(x_t, t, labels), got {type(value).__name__}")
    if not isinstance(schedule, Schedule):
        raise TypeError(f"{where}: schedule must be a Schedule (make_schedule), got {type(schedule).__name__}")
    check_real(where, "scale", scale, minimum=0.0)
    check_choice(where, "prediction", prediction, PREDICTIONS)


def _check_guided_call(x_t, t, labels):
    """labels (N,) are required: the classifier's gradient is that of log p(labels | x_t, t)."""
    if labels is None:
        raise ValueError("ClassifierGuidedModel: labels are required (shape (N,)): the guidance is the gradient "
                         "of log p(labels | x_t, t)")
    n = x_t.shape[0]
    if tuple(labels.shape) != (n,) or tuple(t.shape) != (n,):
        raise ValueError(f"ClassifierGuidedModel: labels and t must have shape ({n},) for x_t {tuple(x_t.shape)}, "
                         f"got labels {tuple(labels.shape)}, t {tuple(t.shape)}")
