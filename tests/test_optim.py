"""optim: AdamW against torch and against the paper's formulas, the schedule, clipping, EMA, bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_numpy
from tinyddpm.training.optim import EMA, AdamW, clip_grad_norm, lr_schedule


def make_params(rng, dtype=np.float64):
    return {"conv.w": randn(rng, 4, 3, 3, 3, dtype=dtype), "conv.b": randn(rng, 4, dtype=dtype),
            "norm.gamma": randn(rng, 4, dtype=dtype), "out.w": randn(rng, 2, 4, dtype=dtype)}


def make_grads(rng, params):
    return {k: randn(rng, *p.shape, dtype=p.dtype) for k, p in params.items()}


# ---------------------------------------------------------------------------------------- AdamW

def test_adamw_matches_torch(torch):
    rng = np.random.default_rng(0)
    params = make_params(rng)
    no_decay = {"conv.b", "norm.gamma"}
    opt = AdamW(params, lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, no_decay=no_decay)
    tparams = {k: to_torch(torch, p) for k, p in params.items()}
    topt = torch.optim.AdamW(
        [{"params": [t for k, t in tparams.items() if k not in no_decay], "weight_decay": 0.1},
         {"params": [t for k, t in tparams.items() if k in no_decay], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.8, 0.95), eps=1e-6, foreach=False)
    for step in range(6):
        lr = lr_schedule(step, 1e-2, warmup_steps=3, total_steps=6)  # a changing rate, applied per step
        grads = make_grads(rng, params)
        opt.step(params, grads, lr=lr)
        for group in topt.param_groups:
            group["lr"] = lr
        for k, t in tparams.items():
            t.grad = to_torch(torch, grads[k], requires_grad=False)
        topt.step()
        for k, t in tparams.items():
            assert oracle_error(params[k], t) < ORACLE_TOLERANCE, (step, k)
            assert oracle_error(opt.m[k], topt.state[t]["exp_avg"]) < ORACLE_TOLERANCE
            assert oracle_error(opt.v[k], topt.state[t]["exp_avg_sq"]) < ORACLE_TOLERANCE


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), steps=st.integers(1, 6),
       wd=st.sampled_from([0.0, 0.01, 0.5]), b1=st.sampled_from([0.0, 0.9]), b2=st.sampled_from([0.9, 0.999]),
       seed=st.integers(0, 2**31 - 1))
def test_adamw_matches_the_algorithm(shape, steps, wd, b1, b2, seed):
    """Against Loshchilov & Hutter's algorithm written out with explicit bias-corrected moments."""
    rng = np.random.default_rng(seed)
    p = randn(rng, *shape)
    params = {"p": p}
    opt = AdamW(params, lr=0.03, betas=(b1, b2), eps=1e-8, weight_decay=wd)
    ref, m, v = to_numpy(p).copy(), 0.0, 0.0
    for t in range(1, steps + 1):
        g = randn(rng, *shape)
        opt.step(params, {"p": g})
        g = to_numpy(g)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        ref = ref - 0.03 * wd * ref - 0.03 * m_hat / (np.sqrt(v_hat) + 1e-8)
    err = np.max(np.abs(to_numpy(params["p"]) - ref)) / max(1e-30, np.max(np.abs(ref)))
    assert err < 1e-12 and opt.t == steps


def test_adamw_updates_in_place_and_keeps_dtype():
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(1)
        params = make_params(rng, dtype)
        before = {k: p for k, p in params.items()}
        copies = {k: to_numpy(p).copy() for k, p in params.items()}
        opt = AdamW(params, lr=1e-3, weight_decay=0.01)
        opt.step(params, make_grads(rng, params))
        for k, p in params.items():
            assert p is before[k] and p.dtype == dtype and opt.m[k].dtype == dtype and opt.v[k].dtype == dtype
            assert not np.array_equal(to_numpy(p), copies[k])


def test_adamw_no_decay_callable_and_set_agree():
    rng = np.random.default_rng(2)
    p1 = make_params(rng)
    p2 = {k: v.copy() for k, v in p1.items()}
    o1 = AdamW(p1, lr=0.1, weight_decay=0.5, no_decay=lambda n: n.endswith((".b", ".gamma")))
    o2 = AdamW(p2, lr=0.1, weight_decay=0.5, no_decay={"conv.b", "norm.gamma"})
    assert o1.decays == o2.decays == {"conv.w": True, "conv.b": False, "norm.gamma": False, "out.w": True}
    zero = {k: v * 0 for k, v in p1.items()}
    snapshot = {k: to_numpy(v).copy() for k, v in p1.items()}
    o1.step(p1, zero)
    o2.step(p2, zero)
    for k in p1:  # a zero gradient leaves only the decay: exempt tensors do not move
        assert np.array_equal(to_numpy(p1[k]), to_numpy(p2[k]))
        moved = not np.array_equal(to_numpy(p1[k]), snapshot[k])
        assert moved == o1.decays[k]


def test_adamw_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    params = make_params(rng)
    opt = AdamW(params, lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        opt.step(params, make_grads(rng, params))
    state = {k: (to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in opt.state_dict().items()}
    twin_params = {k: p.copy() for k, p in params.items()}
    twin = AdamW(twin_params, lr=123.0)  # the hyper-parameters come back from the state
    twin.load_state_dict(state)
    assert (twin.t, twin.lr, twin.weight_decay) == (3, 1e-2, 0.05)
    for _ in range(2):
        grads = make_grads(rng, params)
        opt.step(params, grads)
        twin.step(twin_params, {k: g.copy() for k, g in grads.items()})
    for k in params:
        assert np.array_equal(to_numpy(params[k]), to_numpy(twin_params[k]))


def test_adamw_bad_input_names_the_tensor_and_shapes():
    rng = np.random.default_rng(4)
    params = make_params(rng)
    opt = AdamW(params, lr=1e-3)
    grads = make_grads(rng, params)
    del grads["conv.b"]
    with pytest.raises(ValueError, match=r"AdamW.step: grads.*missing \['conv.b'\]"):
        opt.step(params, grads)
    grads = make_grads(rng, params)
    grads["out.w"] = randn(rng, 4, 2)
    with pytest.raises(ValueError, match=r"AdamW.step: grad 'out.w' has shape \(4, 2\).*\(2, 4\)"):
        opt.step(params, grads)
    grads = make_grads(rng, params)
    grads["out.w"] = grads["out.w"].astype(np.float32)
    with pytest.raises(TypeError, match=r"AdamW.step: grad 'out.w' has dtype float32.*float64"):
        opt.step(params, grads)
    with pytest.raises(TypeError, match=r"AdamW: 'i' has dtype int64 \(shape \(3,\)\)"):
        AdamW({"i": np.arange(3)}, lr=1e-3)
    with pytest.raises(ValueError, match=r"AdamW: no_decay names \['typo'\]"):
        AdamW(params, lr=1e-3, no_decay={"typo"})
    with pytest.raises(ValueError, match="AdamW: betas"):
        AdamW(params, lr=1e-3, betas=(1.0, 0.999))
    state = opt.state_dict()
    state["m/conv.w"] = np.zeros((1, 2))
    with pytest.raises(ValueError, match=r"AdamW.load_state_dict: state 'm/conv.w' has shape \(1, 2\)"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match=r"AdamW.load_state_dict.*missing \['t'\]"):
        opt.load_state_dict({k: v for k, v in opt.state_dict().items() if k != "t"})


def test_adamw_nan_gradient_propagates():
    rng = np.random.default_rng(5)
    params = make_params(rng)
    opt = AdamW(params, lr=1e-3)
    grads = make_grads(rng, params)
    grads["conv.b"][1] = np.nan
    opt.step(params, grads)
    b = to_numpy(params["conv.b"])
    assert np.isnan(b[1]) and not np.isnan(np.delete(b, 1)).any()
    assert not np.isnan(to_numpy(params["conv.w"])).any()


# ---------------------------------------------------------------------------------------- schedule

def test_lr_schedule_warmup_constant_cosine():
    assert [lr_schedule(s, 1.0, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_schedule(0, 2e-4) == 2e-4 and lr_schedule(10**6, 2e-4) == 2e-4
    cos = [lr_schedule(s, 1.0, warmup_steps=2, total_steps=12, min_lr=0.1) for s in range(15)]
    assert cos[:2] == [0.5, 1.0] and cos[2] == 1.0
    assert math.isclose(cos[7], 0.1 + 0.9 * 0.5, rel_tol=1e-12)  # half way through the decay
    assert cos[12:] == [0.1, 0.1, 0.1] and all(a >= b for a, b in zip(cos[2:], cos[3:]))


def test_lr_schedule_bad_input():
    with pytest.raises(ValueError, match="lr_schedule: step must be an integer >= 0, got -1"):
        lr_schedule(-1, 1.0)
    with pytest.raises(ValueError, match=r"lr_schedule: total_steps \(5\) must exceed warmup_steps \(5\)"):
        lr_schedule(0, 1.0, warmup_steps=5, total_steps=5)


# ---------------------------------------------------------------------------------------- clipping

@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clips; leaves alone (scale 1)
def test_clip_grad_norm_matches_torch(torch, max_norm):
    rng = np.random.default_rng(6)
    grads = make_grads(rng, make_params(rng))
    tgrads = {k: to_torch(torch, g) for k, g in grads.items()}
    for t in tgrads.values():
        t.grad = t.detach().clone()
    before = {k: g for k, g in grads.items()}
    norm = clip_grad_norm(grads, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(list(tgrads.values()), max_norm, foreach=False)
    assert hasattr(norm, "shape") and norm.shape == ()   # an array: no host sync on CuPy
    assert oracle_error(norm, tnorm) < ORACLE_TOLERANCE
    for k, g in grads.items():
        assert g is before[k]
        assert oracle_error(g, tgrads[k].grad) < ORACLE_TOLERANCE
    after = math.sqrt(sum(float(np.sum(to_numpy(g) ** 2)) for g in grads.values()))
    assert after == pytest.approx(min(max_norm, float(norm)), rel=1e-5)


def test_clip_grad_norm_float32_nan_and_bad_input():
    rng = np.random.default_rng(7)
    grads = make_grads(rng, make_params(rng, np.float32))
    norm = clip_grad_norm(grads, 1.0)
    assert norm.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    grads["conv.b"][0] = np.nan
    assert np.isnan(float(clip_grad_norm(grads, 1.0)))
    assert all(np.isnan(to_numpy(g)).all() for g in grads.values())  # as torch: NaN is not hidden
    with pytest.raises(ValueError, match="clip_grad_norm: max_norm must be > 0, got 0"):
        clip_grad_norm(grads, 0)
    with pytest.raises(TypeError, match=r"clip_grad_norm: 'n' has dtype int64 \(shape \(2,\)\)"):
        clip_grad_norm({"n": np.arange(2)}, 1.0)


# ---------------------------------------------------------------------------------------- EMA

@settings(max_examples=15, deadline=None)
@given(decay=st.sampled_from([0.0, 0.5, 0.9, 0.999]), k=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_ema_closed_form(decay, k, seed):
    """With constant weights p after a start e0: e_k = d^k e0 + (1 - d^k) p."""
    rng = np.random.default_rng(seed)
    e0 = {"w": randn(rng, 3, 2)}
    p = {"w": randn(rng, 3, 2)}
    ema = EMA(e0, decay=decay)
    for _ in range(k):
        ema.update(p)
    want = decay ** k * to_numpy(e0["w"]) + (1 - decay ** k) * to_numpy(p["w"])
    assert np.allclose(to_numpy(ema.params["w"]), want, rtol=1e-12, atol=1e-12)
    assert ema.num_updates == k


def test_ema_warmup_decays_and_copy_semantics():
    rng = np.random.default_rng(8)
    params = {"w": randn(rng, 2, 2)}
    ema = EMA(params, decay=0.999, warmup=True)
    assert ema.params["w"] is not params["w"]
    seen = []
    for _ in range(3):
        seen.append(ema.current_decay())
        ema.update(params)
    assert seen == [1 / 10, 2 / 11, 3 / 12]
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999


def test_ema_state_dict_round_trip_and_from_state_dict():
    rng = np.random.default_rng(9)
    params = make_params(rng, np.float32)
    ema = EMA(params, decay=0.9, warmup=True)
    for _ in range(3):
        params = make_params(rng, np.float32)
        ema.update(params)
    state = {k: (to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in ema.state_dict().items()}
    fresh = EMA(make_params(rng, np.float32), decay=0.5)
    fresh.load_state_dict(state)
    rebuilt = EMA.from_state_dict(state)
    for other in (fresh, rebuilt):
        assert (other.decay, other.warmup, other.num_updates) == (0.9, True, 3)
        for k in params:
            assert np.array_equal(to_numpy(other.params[k]), to_numpy(ema.params[k]))
            assert other.params[k].dtype == np.float32


def test_ema_bad_input_and_nan():
    rng = np.random.default_rng(10)
    ema = EMA({"w": randn(rng, 2, 3)}, decay=0.9)
    with pytest.raises(ValueError, match=r"EMA.update: param 'w' has shape \(3, 2\), the parameter has \(2, 3\)"):
        ema.update({"w": randn(rng, 3, 2)})
    with pytest.raises(ValueError, match=r"EMA.update: params.*missing \['w'\], unexpected \['v'\]"):
        ema.update({"v": randn(rng, 2, 3)})
    with pytest.raises(ValueError, match=r"EMA: decay must lie in \[0, 1\], got 1.5"):
        EMA({"w": randn(rng, 2)}, decay=1.5)
    p = randn(rng, 2, 3)
    p[0, 0] = np.nan
    ema.update({"w": p})
    e = to_numpy(ema.params["w"])
    assert np.isnan(e[0, 0]) and np.isnan(e).sum() == 1
