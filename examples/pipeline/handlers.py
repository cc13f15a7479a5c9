"""Handlers of the example pipeline: synthetic data, standardisation, logistic regression, evaluation.

Run a worker with them: `python -m services.worker examples.pipeline.handlers`. Every step computes
something real, in plain Python, small enough to finish in a second.
"""

from __future__ import annotations

import math
import random
from typing import Any

from jetdag.worker import JobContext, JobFailed, handler

Row = list[float]


@handler("generate")
def generate(ctx: JobContext) -> dict[str, Any]:
    """`config.samples` points in 2-D, labelled by a noisy linear rule (seeded: the same data every run)."""
    rng = random.Random(ctx.config.get("seed", 42))
    n = int(ctx.config.get("samples", 600))
    xs: list[Row] = []
    ys: list[int] = []
    for _ in range(n):
        a, b = rng.gauss(5, 2), rng.gauss(-3, 4)
        xs.append([round(a, 4), round(b, 4)])
        ys.append(1 if 1.5 * a - 0.8 * b + rng.gauss(0, 1.5) > 9 else 0)
    ctx.log.info("generated", samples=n, positives=sum(ys))
    return {"x": xs, "y": ys}


@handler("preprocess")
def preprocess(ctx: JobContext) -> dict[str, Any]:
    """Standardise each feature (mean 0, sd 1) and split train/test by `config.testFraction`."""
    data = ctx.dependencies["generate"]
    xs: list[Row] = data["x"]
    ys: list[int] = data["y"]
    if not xs:
        raise JobFailed("no data to preprocess")
    dims = len(xs[0])
    means = [sum(r[d] for r in xs) / len(xs) for d in range(dims)]
    sds = [math.sqrt(sum((r[d] - means[d]) ** 2 for r in xs) / len(xs)) or 1.0 for d in range(dims)]
    scaled = [[round((r[d] - means[d]) / sds[d], 5) for d in range(dims)] for r in xs]
    cut = int(len(xs) * (1 - float(ctx.config.get("testFraction", 0.25))))
    return {
        "train": {"x": scaled[:cut], "y": ys[:cut]},
        "test": {"x": scaled[cut:], "y": ys[cut:]},
        "means": means,
        "sds": sds,
    }


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, z))))


@handler("train")
def train(ctx: JobContext) -> dict[str, Any]:
    """Logistic regression by batch gradient descent (`config.learningRate`, `config.epochs`)."""
    split = ctx.dependencies["preprocess"]["train"]
    xs: list[Row] = split["x"]
    ys: list[int] = split["y"]
    lr = float(ctx.config.get("learningRate", 0.1))
    epochs = int(ctx.config.get("epochs", 200))
    w = [0.0] * len(xs[0])
    bias = 0.0
    loss = 0.0
    for _ in range(epochs):
        grad_w = [0.0] * len(w)
        grad_b = 0.0
        loss = 0.0
        for row, y in zip(xs, ys, strict=True):
            p = _sigmoid(sum(wi * xi for wi, xi in zip(w, row, strict=True)) + bias)
            loss -= y * math.log(p + 1e-12) + (1 - y) * math.log(1 - p + 1e-12)
            for d, xi in enumerate(row):
                grad_w[d] += (p - y) * xi
            grad_b += p - y
        w = [wi - lr * g / len(xs) for wi, g in zip(w, grad_w, strict=True)]
        bias -= lr * grad_b / len(xs)
    return {"weights": w, "bias": bias, "loss": round(loss / len(xs), 5), "learningRate": lr, "epochs": epochs}


@handler("evaluate")
def evaluate(ctx: JobContext) -> dict[str, Any]:
    """Accuracy of every trained model on the test split; the best one wins."""
    test = ctx.dependencies["preprocess"]["test"]
    scores = {}
    for job_id, model in ctx.dependencies.items():
        if "weights" not in model:
            continue
        correct = 0
        for row, y in zip(test["x"], test["y"], strict=True):
            z = sum(wi * xi for wi, xi in zip(model["weights"], row, strict=True)) + model["bias"]
            correct += int((_sigmoid(z) >= 0.5) == bool(y))
        scores[job_id] = round(correct / len(test["y"]), 4)
    if not scores:
        raise JobFailed("no trained model to evaluate")
    best = max(scores, key=lambda k: scores[k])
    return {"accuracy": scores, "best": best, "testSamples": len(test["y"])}
