"""The learned generator's model: a tiny decoder-only transformer per trial, batched.

Every weight carries a leading trials axis and every matmul is a `bmm` over it, so all trials
sample and fine-tune together (docs/learned.md); the optimizer is a batched Adam that updates
only the trials given as active. `learned.py` pre-trains one model and drives the generator.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from archrefine.core.config import LearnedConfig

Params = dict[str, torch.Tensor]
PROJECTIONS = ("qkv", "out", "up", "down")


def one_thread(fn):
    """Run `fn` on one torch thread: these tensors are tiny, and on 2 shared cores two threads
    measured 4x slower than one. The caller's thread count is restored afterwards."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


# ----------------------------------------------------------------------------- batched model


def _lin(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`x (T, ..., in) @ w (T, in, out)` as one bmm over the trials axis."""
    t = x.shape[0]
    return torch.bmm(x.reshape(t, -1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[-1])


def _ln(x: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Layer norm with per-trial affine `wb (T, 2, D)`."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    y = F.layer_norm(x, x.shape[-1:])
    return y * wb[:, 0].view(shape) + wb[:, 1].view(shape)


def init_params(cfg: LearnedConfig, vocab: int, length: int, g: torch.Generator) -> Params:
    """One model (trials axis of size 1): GPT-2-style init, residual outputs scaled down."""
    d, layers = cfg.d_model, cfg.layers

    def w(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(1, *shape, generator=g) * std

    ln = torch.stack([torch.ones(d), torch.zeros(d)])[None]
    resid = (2 * layers) ** -0.5
    p = {"emb": w(vocab + 1, d, std=0.02), "pos": w(length, d, std=0.02)}
    for i in range(layers):
        p |= {
            f"{i}.ln1": ln.clone(),
            f"{i}.qkv": w(d, 3 * d, std=d**-0.5),
            f"{i}.out": w(d, d, std=d**-0.5 * resid),
            f"{i}.ln2": ln.clone(),
            f"{i}.up": w(d, 4 * d, std=d**-0.5),
            f"{i}.down": w(4 * d, d, std=(4 * d) ** -0.5 * resid),
        }
    return p | {"lnf": ln.clone(), "head": w(d, vocab, std=d**-0.5)}


def init_lora(cfg: LearnedConfig, base: Params, g: torch.Generator) -> Params:
    """Adapters `a (T, in, r)` random and `b (T, r, out)` zero, so training starts at `base`."""
    out: Params = {}
    for name, w in base.items():
        if name.split(".")[-1] in PROJECTIONS:
            t, n_in, n_out = w.shape
            out[name + ".a"] = torch.randn(t, n_in, cfg.lora_rank, generator=g) * n_in**-0.5
            out[name + ".b"] = torch.zeros(t, cfg.lora_rank, n_out)
    return out


def forward(
    p: Params,
    lora: Params,
    tokens: torch.Tensor,
    heads: int,
    cache: KVCache | None = None,
) -> torch.Tensor:
    """Next-token logits `(T, B, L, V)` for inputs `tokens (T, B, L)` that start with BOS.

    With `cache`, keys and values of earlier calls are kept per layer and `tokens` continue the
    cached prefix, so sampling costs one position per step.
    """
    t, b, n = tokens.shape
    d = p["emb"].shape[-1]
    start = cache.filled if cache is not None else 0

    def weight(name: str) -> torch.Tensor:
        if name + ".a" in lora:
            return p[name] + torch.bmm(lora[name + ".a"], lora[name + ".b"])
        return p[name]

    x = p["emb"][torch.arange(t)[:, None, None], tokens] + p["pos"][:, None, start : start + n]
    for i in range(sum(k.endswith(".qkv") for k in p)):
        q, k, v = _lin(_ln(x, p[f"{i}.ln1"]), weight(f"{i}.qkv")).chunk(3, dim=-1)
        q, k, v = (z.reshape(t * b, n, heads, d // heads).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            k, v = cache.extend(i, k, v)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0 and n > 1)
        x = x + _lin(att.transpose(1, 2).reshape(t, b, n, d), weight(f"{i}.out"))
        hidden = F.gelu(_lin(_ln(x, p[f"{i}.ln2"]), weight(f"{i}.up")))
        x = x + _lin(hidden, weight(f"{i}.down"))
    if cache is not None:
        cache.filled += n
    return _lin(_ln(x, p["lnf"]), p["head"])


class KVCache:
    """Keys and values of the positions decoded so far, per layer, in buffers sized for the
    whole sequence: each position writes its own slot and attention reads a view of the
    prefix, where concatenating copied the whole prefix at every position (18% of sampling).
    The values are the same, so attention's output is too, bit for bit (`tests/test_learned.py`).
    """

    def __init__(self, length: int):
        self.length, self.filled = length, 0
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def extend(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k, v (TB, heads, n, dh)` after the prefix; the keys and values so far."""
        if layer == len(self.layers):
            shape = (*k.shape[:2], self.length, k.shape[-1])
            self.layers.append((k.new_empty(shape), v.new_empty(shape)))
        keys, values = self.layers[layer]
        end = self.filled + k.shape[-2]
        keys[:, :, self.filled : end] = k
        values[:, :, self.filled : end] = v
        return keys[:, :, :end], values[:, :, :end]


def token_loss(p: Params, lora: Params, seqs: torch.Tensor, heads: int) -> torch.Tensor:
    """Mean next-token cross-entropy per trial, `(T,)`, of `seqs (T, B, L)`."""
    bos = torch.full_like(seqs[..., :1], p["emb"].shape[1] - 1)
    logits = forward(p, lora, torch.cat([bos, seqs[..., :-1]], dim=-1), heads)
    ce = F.cross_entropy(logits.flatten(0, 2), seqs.flatten(), reduction="none")
    return ce.view(seqs.shape[0], -1).mean(dim=1)


class Adam:
    """Adam over trial-stacked tensors, stepping only the trials marked active (a trial with an
    empty fine-tuning set must not drift on stale momentum).

    `m` and `v` are per-tensor views into one `(trials, size)` buffer each, so the usual step
    (every trial active) is a dozen whole-buffer operations instead of a dozen per tensor: the
    same element-wise arithmetic, bit for bit, into preallocated buffers (Adam took 14% of a
    fine-tuning step as ~250 small calls)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        trials = params[0].shape[0]
        self.sizes = [q[0].numel() for q in params]
        self._m = torch.zeros(trials, sum(self.sizes))
        self._v = torch.zeros_like(self._m)
        self.m, self.v = self._views(self._m, params), self._views(self._v, params)
        self._work = [torch.empty_like(self._m) for _ in range(3)]  # no large temporaries
        self.t = torch.zeros(trials)

    def _views(self, flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
        parts = flat.split(self.sizes, dim=1)
        return [part.view(q.shape) for part, q in zip(parts, like, strict=True)]

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads, active: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += active
        c1, c2 = 1 - b1 ** self.t.clamp(min=1), 1 - b2 ** self.t.clamp(min=1)
        if bool(active.all()):  # the usual case: the same arithmetic without the masking
            g, a, b = self._work
            torch.cat([x.reshape(x.shape[0], -1) for x in grads], dim=1, out=g)
            self._m.mul_(b1).add_(torch.mul(g, 1 - b1, out=a))  # b1 · m + (1 − b1) · g
            self._v.mul_(b2).add_(torch.mul(g, 1 - b2, out=a).mul_(g))  # ... (1 − b2) · g · g
            torch.div(self._m, c1[:, None], out=a).mul_(self.lr)  # lr · (m / c1)
            torch.div(self._v, c2[:, None], out=b).sqrt_().add_(self.eps)  # sqrt(v / c2) + eps
            torch._foreach_sub_(params, self._views(a.div_(b), params))
            return
        for q, g, m, v in zip(params, grads, self.m, self.v):
            view = (-1,) + (1,) * (q.dim() - 1)
            on = active.view(view)
            m.copy_(torch.where(on, b1 * m + (1 - b1) * g, m))
            v.copy_(torch.where(on, b2 * v + (1 - b2) * g * g, v))
            upd = self.lr * (m / c1.view(view)) / ((v / c2.view(view)).sqrt() + self.eps)
            q.sub_(torch.where(on, upd, torch.zeros_like(upd)))


@torch.inference_mode()
def sample(
    p: Params,
    lora: Params,
    base: torch.Tensor,
    write: torch.Tensor,
    cfg: LearnedConfig,
    g: torch.Generator,
    temperature: float | None = None,
) -> torch.Tensor:
    """Left to right, replace `base (T, n, L)` where `write` with draws from the model given
    the (already rewritten) prefix, at `temperature` (default `cfg.temperature`) and nucleus
    `cfg.top_p`."""
    temperature = cfg.temperature if temperature is None else temperature
    seqs = base.clone()
    cache = KVCache(seqs.shape[-1])
    step = torch.full_like(seqs[..., :1], p["emb"].shape[1] - 1)  # BOS
    for i in range(seqs.shape[-1]):
        logits = forward(p, lora, step, cfg.heads, cache)[..., -1, :]
        if write[..., i].any():
            probs = torch.softmax(logits / temperature, dim=-1)
            sorted_p, order = probs.sort(dim=-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p  # smallest set reaching top_p
            cdf = (sorted_p * keep).cumsum(-1)
            u = torch.rand(cdf.shape[:-1] + (1,), generator=g) * cdf[..., -1:]
            rank = (cdf < u).sum(-1, keepdim=True).clamp(max=cdf.shape[-1] - 1)
            draw = order.gather(-1, rank).squeeze(-1)
            seqs[..., i] = torch.where(write[..., i], draw, seqs[..., i])
        step = seqs[..., i : i + 1]
    return seqs
