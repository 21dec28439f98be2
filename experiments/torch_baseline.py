"""The PyTorch baselines a researcher would otherwise run: delayed SGD on LeNet-5, configs one by one; and
an Adam loop on the Transformer language model of :class:`asgd_jax.Transformer` (:func:`measure_transformer`).

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

__all__ = ["make_lenet5", "DelayedSGD", "measure", "make_transformer", "measure_transformer"]


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
    epochs: int = 4,
    test: int = 1000,
    lr: float = 0.01,
    seed: int = 0,
    channels_last: bool = False,
    device: str = "cpu",
) -> float:
    """Samples per second of one config's fastest epoch after the first (which warms up).

    The best of ``epochs - 1`` timed epochs, as the engine's rows are timed (``experiments.benchmark``): on a
    shared CPU one epoch can lose a tenth of its speed to another process.

    ``device``: a ``torch.device`` name, e.g. ``"cuda"``; the model and the data set live there (the epoch's
    closing evaluation reads its result back with ``.item()``, so the time includes the device's work).
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (samples, 1, 28, 28), dtype=np.uint8)).float().div_(255.0)
    y = torch.from_numpy(rng.integers(0, 10, samples)).long()
    x, y = x.to(device), y.to(device)
    xt, yt = x[:test].clone(), y[:test].clone()
    model = make_lenet5().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt = DelayedSGD(model.parameters(), lr=lr, momentum=0.9, delay=delay)
    steps = samples // batch_size
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(samples, device=device)
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
        times.append(time.perf_counter() - t0)
    return steps * batch_size / min(times[1:] or times)


def make_transformer(vocab: int = 256, layers: int = 2, width: int = 128, heads: int = 4, context: int = 128,
                     mlp_ratio: int = 4):
    """The network of :class:`asgd_jax.Transformer` in PyTorch: pre-LayerNorm decoder, learned positions.

    Token embedding plus learned positions; per block ``x + Attn(LN(x))`` (``nn.MultiheadAttention``,
    batch first, a boolean causal mask) and ``x + W2 gelu_tanh(W1 LN(x))``; a final LayerNorm and a dense
    head. LayerNorm epsilon 1e-6 like flax's. Input int64 ``(B, T)``, output logits ``(B, T, vocab)``.
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
            self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                     nn.Linear(mlp_ratio * width, width))

        def forward(self, x, mask):
            y = self.ln1(x)
            x = x + self.attn(y, y, y, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.pos = nn.Parameter(0.02 * torch.randn(context, width))
            self.blocks = nn.ModuleList([Block() for _ in range(layers)])
            self.ln = nn.LayerNorm(width, eps=1e-6)
            self.head = nn.Linear(width, vocab)

        def forward(self, tokens):
            t = tokens.shape[-1]
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), 1)  # True: not allowed
            x = self.embed(tokens) + self.pos[:t]
            for b in self.blocks:
                x = b(x, mask)
            return self.head(self.ln(x))

    return Model()


def measure_transformer(
    batch_size: int, *, layers: int = 2, width: int = 128, heads: int = 4, context: int = 128, steps: int = 30,
    windows: int = 4096, test: int = 16, threads: int = 2, epochs: int = 2, lr: float = 1e-3, seed: int = 0,
) -> float:
    """Tokens per second of one config's last epoch of ``steps`` Adam steps on random bytes (earlier epochs warm up).

    Like :func:`measure`: a random permutation per epoch, batches gathered by index, an evaluation on
    ``test`` windows at the end of each epoch (included in the time, as in the engine's epochs).
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    stream = torch.from_numpy(rng.integers(0, 256, (windows + test, context + 1)))
    x, y = stream[:windows, :-1].contiguous(), stream[:windows, 1:].contiguous()
    xt, yt = stream[windows:, :-1].contiguous(), stream[windows:, 1:].contiguous()
    model = make_transformer(256, layers, width, heads, context)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    seconds = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(windows)
        model.train()
        for i in range(steps):
            idx = perm[(i * batch_size) % windows : (i * batch_size) % windows + batch_size]
            loss = F.cross_entropy(model(x[idx]).reshape(-1, 256), y[idx].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            _ = F.cross_entropy(model(xt).reshape(-1, 256), yt.reshape(-1)).item()
        seconds = time.perf_counter() - t0
    return steps * batch_size * context / seconds


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="64,512")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--delay", type=int, default=4)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu", help="a torch device, e.g. cuda")
    a = p.parse_args()
    for b in (int(s) for s in a.batch_sizes.split(",")):
        r = measure(b, a.delay, a.samples, a.threads, epochs=3, channels_last=a.channels_last, device=a.device)
        print(f"torch batch {b:5d}  threads {a.threads}  {r:10.0f} samples/s", flush=True)
