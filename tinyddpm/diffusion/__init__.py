"""The diffusion math: schedules, the forward process and its loss, samplers, guidance, interpolation.

    schedules.py        linear / cosine / sigmoid betas and every derived table (Schedule, make_schedule)
    forward_process.py  q_sample, training targets, eps <-> x0 <-> v conversions, diffusion_loss (+ gradient)
    timesteps.py        which timesteps few-step samplers visit ('linspace', 'leading', 'trailing')
    clipping.py         clipping of the x0 estimate: none, static, dynamic thresholding
    loop.py             the one step shape (Sampler, StepOutput) and the one loop run_sampler: seeds, the model
                        call, progress, callbacks, Trajectory
    ddpm.py, ddim.py, dpm_solver.py   the samplers: DDPMSampler, DDIMSampler, DPMSolverSampler, each with
                        step(model_output, t, x_t, rng), and ddpm_sample, ddim_sample, dpm_solver_sample
    samplers.py         a front door sample(method=...)
    guidance.py         classifier-free guidance (GuidedModel) and classifier guidance (ClassifierGuidedModel)
    interpolation.py    lerp / slerp of starting noise

Conventions: timesteps are integers t = 0 .. T-1 (t = 0 the least noisy); a model is any callable
model(x_t, t, labels) returning an 'eps', 'x0' or 'v' prediction of x_t's shape. Tables are computed in
float64 on the host; arrays follow the inputs' backend (NumPy or CuPy) and dtype.
"""
from .clipping import CLIP_MODES, clip_x0, dynamic_threshold
from .ddim import DDIMSampler, ddim_sample, ddim_sigma, ddim_step
from .ddpm import VARIANCES, DDPMSampler, ddpm_sample, ddpm_step
from .dpm_solver import (FINAL_SIGMAS, DPMSolverSampler, dpm_solver_first_order_step, dpm_solver_sample,
                         dpm_solver_second_order_step)
from .forward_process import (LOSSES, PREDICTIONS, convert_prediction, diffusion_loss, eps_from_v, eps_from_x0,
                              min_snr_weights, q_sample, training_target, v_from_eps, v_from_x0, x0_from_eps, x0_from_v)
from .guidance import ClassifierGuidedModel, GuidedModel, cfg_combine, check_interval, describe_guidance
from .interpolation import interpolate_noise, lerp, slerp
from .loop import ModelCall, Sampler, Step, StepOutput, Trajectory, run_sampler
from .samplers import SAMPLERS, max_steps, sample
from .schedules import (ARRAY_NAMES, SCHEDULES, Schedule, betas_from_alpha_bar, cosine_betas, linear_betas,
                        make_schedule, sigmoid_betas)
from .timestep_sampling import TIMESTEP_DISTRIBUTIONS, draw_timesteps, timestep_probabilities
from .timesteps import (PREV_RULES, SPACINGS, ddim_prev_timesteps, ddim_timesteps, dpm_solver_max_steps,
                        dpm_solver_timesteps)

__all__ = [
    "ARRAY_NAMES", "CLIP_MODES", "FINAL_SIGMAS", "LOSSES", "PREDICTIONS", "PREV_RULES", "SAMPLERS", "SCHEDULES",
    "SPACINGS", "TIMESTEP_DISTRIBUTIONS", "VARIANCES", "DDIMSampler", "DDPMSampler", "DPMSolverSampler", "GuidedModel",
    "ClassifierGuidedModel",
    "ModelCall", "Sampler", "Schedule", "Step", "StepOutput", "Trajectory", "betas_from_alpha_bar",
    "cfg_combine", "check_interval", "clip_x0", "convert_prediction", "cosine_betas", "ddim_prev_timesteps",
    "ddim_sample", "describe_guidance",
    "ddim_sigma", "ddim_step", "ddim_timesteps", "ddpm_sample", "ddpm_step", "diffusion_loss",
    "dpm_solver_first_order_step", "dpm_solver_max_steps", "dpm_solver_sample", "dpm_solver_second_order_step",
    "dpm_solver_timesteps",
    "draw_timesteps", "dynamic_threshold", "eps_from_v", "eps_from_x0", "interpolate_noise", "lerp", "linear_betas",
    "make_schedule", "max_steps", "min_snr_weights", "q_sample", "run_sampler", "sample", "sigmoid_betas", "slerp",
    "timestep_probabilities", "training_target", "v_from_eps", "v_from_x0", "x0_from_eps", "x0_from_v",
]
