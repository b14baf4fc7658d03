"""Part d: the eval preset ('gpu') trained for a wall-clock budget, then samples of every digit with its sampler
and guidance: accuracy and FID-MNIST by tinyddpm's evaluation classifier, beside the real-vs-real floor."""
from __future__ import annotations

import time

import numpy as np

import tinyddpm
from tinyddpm import backend

from .common import on_device
from .m_mpi import MPI_RESERVE_S


def train_for(suite, state, budget: float, res) -> None:
    """train_step until ``budget`` seconds have passed (the clock read after a GPU sync every few steps)."""
    from tinyddpm import train_step

    B = state.config.batch_size
    warm_steps, warm_time, next_line = 10, None, 20.0
    start = time.perf_counter()
    while True:
        train_step(state)
        if state.step % 5 and state.step != warm_steps:
            continue
        suite.sync()
        elapsed = time.perf_counter() - start
        if state.step == warm_steps:   # the first steps compile kernels: the steady rate starts here
            warm_time = elapsed
        if elapsed >= next_line:
            window = state.flush_losses()
            print(f"  train: step {state.step}, loss {np.mean(window):.4f}, {state.step * B / elapsed:.0f} img/s, "
                  f"{elapsed:.0f}/{budget:.0f} s", flush=True)
            next_line += 20.0
        res.update(steps=state.step, train_seconds=elapsed)
        if elapsed >= budget:
            break
    state.flush_losses()
    res["img_s"] = state.step * B / res["train_seconds"]
    if warm_time is not None and state.step > warm_steps:
        res["img_s_steady"] = (state.step - warm_steps) * B / (res["train_seconds"] - warm_time)
    losses = np.asarray(state.losses)
    k = max(1, min(50, len(losses) // 5))
    res["loss_first"], res["loss_last"] = float(losses[:k].mean()), float(losses[-k:].mean())


def evaluation_classifier(suite, res):
    """tinyddpm's MNIST classifier on the device: cached (trained on the same data once), or a quick one."""
    from tinyddpm.classifiers.judge import accuracy, load_or_train_classifier, train_classifier
    from tinyddpm.data.pixels import to_model_range

    train, test = suite.data()
    start = time.perf_counter()
    if suite.sizes.classifier_quick:
        n = min(2000, len(train))
        params, _ = train_classifier(to_model_range(train.images[:n]), train.labels[:n], epochs=1.0, verbose=False)
        info = {"test_accuracy": accuracy(params, to_model_range(test.images), test.labels),
                "note": f"quick: 1 epoch of {n} digits, not cached"}
    else:
        cache = suite.args.classifier_dir or suite.out / "classifier"
        kw = {"data_dir": suite.args.data_dir, "source": "idx"} if suite.args.data_dir else {"source": "subset"}
        params, info = load_or_train_classifier(cache, verbose=False, **kw)   # judge.training_recipe's epochs
        info = {"test_accuracy": info.get("test_accuracy"), "note": f"cached in {cache}",
                "trained_on": info.get("data_source")}
    res["classifier"] = {**info, "seconds": round(time.perf_counter() - start, 1)}
    return params


def part_d_train_eval(suite, res, cap):
    """The eval preset for the budget, samples of every digit with its sampler and guidance, their quality."""
    from tinyddpm import new_state, preset, sample_digits
    from tinyddpm.classifiers.judge import features, predict_proba
    from tinyddpm.data.pixels import to_model_range
    from tinyddpm.evaluation.metrics import fid_from_features, precision_recall, sample_quality

    sz = suite.sizes
    train, test = suite.data()
    config = preset(sz.eval_preset, **({"batch_size": sz.eval_batch} if sz.eval_batch else {}))
    left = suite.total - suite.elapsed() - sz.eval_reserve_s - (MPI_RESERVE_S if "m" in suite.args.parts else 0)
    budget = max(sz.min_train_s, min(suite.budget, left))
    res.update(preset=sz.eval_preset, batch=config.batch_size, budget_s=budget, budget_asked_s=suite.budget,
               data=train.source, sampler=config.sampler, sample_steps=config.sample_steps, guidance=config.guidance,
               guidance_interval=config.guidance_interval, prediction=config.prediction)
    if budget < suite.budget:
        res["budget_note"] = (f"trained {budget:.0f} s, not {suite.budget:.0f} s: the parts before took "
                              f"{suite.elapsed():.0f} s of the {suite.total:.0f} s target")
    with on_device(suite.gpu):
        state = new_state(config, train.images, train.labels, data_source=train.source)
        res["params"] = tinyddpm.count_params(state.params)
        train_for(suite, state, budget, res)
        classifier = evaluation_classifier(suite, res)

        per, chunk = sz.samples_per_digit, sz.chunk_per_digit
        pieces, requested = [], []
        suite.sync()
        start = time.perf_counter()
        for i in range(-(-per // chunk)):
            k = min(chunk, per - i * chunk)
            x = sample_digits(state.ema.params, config.unet, state.schedule, range(10), k, sampler=config.sampler,
                              steps=config.sample_steps, guidance=config.guidance, prediction=config.prediction,
                              seed=i, guidance_interval=config.guidance_interval)
            pieces.append(backend.to_numpy(x))
            requested.append(np.repeat(np.arange(10), k))
        suite.sync()
        sample_seconds = time.perf_counter() - start
        x, requested = np.concatenate(pieces), np.concatenate(requested)       # (n, 1, 28, 28), (n,)
        n = len(x)
        res.update(samples=n, sample_seconds=sample_seconds, sample_img_s=n / sample_seconds)

        real = to_model_range(test.images)
        ref_feats = features(classifier, real[:n])
        if len(real) >= 2 * n:
            other, floor_from = real[n:2 * n], f"test digits {n}..{2 * n - 1} vs test digits 0..{n - 1}"
        else:   # the shipped subset has 1,000 test digits: the second set comes from the train split
            pick = np.random.default_rng(0).choice(len(train), n, replace=False)
            other, floor_from = to_model_range(train.images[pick]), f"{n} random train digits vs test digits 0..{n - 1}"
        other_feats = features(classifier, other)
        quality = sample_quality(features(classifier, x), ref_feats, predict_proba(classifier, x), requested)
    floor_p, floor_r = precision_recall(ref_feats, other_feats)
    res["quality"] = {k: quality[k] for k in ("fid", "accuracy", "precision", "recall", "inception_score")}
    res["floor"] = {"fid": fid_from_features(ref_feats, other_feats), "precision": floor_p, "recall": floor_r,
                    "n": n, "from": floor_from}
    res["reference"] = f"the first {n} test digits ({test.source})"
    res["picture"] = save_grid(suite, x, requested)
    res["passed_checks"] = bool(np.isfinite(res["quality"]["fid"]) and res["steps"] > 0)


def save_grid(suite, x, requested, per_row: int = 10):
    """samples.png: up to ``per_row`` samples of each digit, a row per digit (None if matplotlib fails)."""
    try:
        from tinyddpm import viz

        k = min(per_row, min(int(np.sum(requested == d)) for d in range(10)))
        grid = np.stack([x[requested == d][:k] for d in range(10)])           # (10, k, 1, 28, 28)
        path = suite.out / "samples.png"
        viz.plot_sample_grid(path, grid, row_labels=[str(d) for d in range(10)])
        return path.name
    except Exception as e:
        return f"not drawn ({type(e).__name__}: {e})"
