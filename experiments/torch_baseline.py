"""The PyTorch baseline a researcher would otherwise run: delayed SGD on LeNet-5, configs one by one.

``torch.optim.SGD(momentum=0.9)`` wrapped so that the gradient computed at step
``t`` is applied at step ``t + delay`` (a FIFO of gradient copies; the optimizer,
momentum included, does not move during the first ``delay`` steps, as in
:func:`asgd_jax.delayed`). LeNet-5 is the network of :class:`asgd_jax.LeNet5`,
laid out NCHW (the layout PyTorch's CPU kernels prefer; float32). An epoch draws a random
permutation, gathers each batch by index from a tensor holding the training set,
and ends with an evaluation on the test set, like a real epoch loop and like
:func:`asgd_jax.run_configs`.

PyTorch is imported lazily: only :func:`measure` needs it.

Example (not run by the doctests; needs ``torch``)::

    from experiments import torch_baseline
    rate = torch_baseline.measure(batch_size=64, delay=4, samples=8192, threads=2)
"""

from __future__ import annotations

import collections
import time

import numpy as np

__all__ = ["make_lenet5", "DelayedSGD", "measure"]


def make_lenet5():
    """LeNet-5 (as :class:`asgd_jax.LeNet5`) as a ``torch.nn.Sequential``, NCHW input ``(N, 1, 28, 28)``."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


class DelayedSGD:
    """``torch.optim.SGD`` that applies each gradient ``delay`` steps after it was computed."""

    def __init__(self, params, lr: float, momentum: float = 0.9, delay: int = 0):
        import torch

        self.params = [p for p in params]
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
        self.delay = int(delay)
        self.buffer: collections.deque = collections.deque()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.delay == 0:
            self.opt.step()
            return
        self.buffer.append([p.grad.detach().clone() for p in self.params])
        if len(self.buffer) > self.delay:
            for p, g in zip(self.params, self.buffer.popleft()):
                p.grad = g
            self.opt.step()


def measure(
    batch_size: int,
    delay: int = 4,
    samples: int = 8192,
    threads: int = 2,
    epochs: int = 2,
    test: int = 1000,
    lr: float = 0.01,
    seed: int = 0,
    channels_last: bool = False,
) -> float:
    """Samples per second of one config's last epoch (earlier epochs warm up)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (samples, 1, 28, 28), dtype=np.uint8)).float().div_(255.0)
    y = torch.from_numpy(rng.integers(0, 10, samples)).long()
    xt, yt = x[:test].clone(), y[:test].clone()
    model = make_lenet5()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt = DelayedSGD(model.parameters(), lr=lr, momentum=0.9, delay=delay)
    steps = samples // batch_size
    seconds = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(samples)
        model.train()
        for i in range(steps):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(xt)
            acc = (logits.argmax(-1) == yt).float().mean().item()
            _ = F.cross_entropy(logits, yt).item(), acc
        seconds = time.perf_counter() - t0
    return steps * batch_size / seconds


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="64,512")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--delay", type=int, default=4)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    for b in (int(s) for s in a.batch_sizes.split(",")):
        r = measure(b, a.delay, a.samples, a.threads, epochs=3, channels_last=a.channels_last)
        print(f"torch batch {b:5d}  threads {a.threads}  {r:10.0f} samples/s", flush=True)
