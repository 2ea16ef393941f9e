"""Y-Tuning's label network in pure torch: label embeddings that attend over frozen features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["init_label_network", "label_network_logits", "layer_names"]

#: Width of the feed-forward block, as a multiple of the model width.
FF_MULTIPLIER = 4


def layer_names(layer: int) -> tuple[str, ...]:
    """Parameter names of decoder layer ``layer``."""
    return tuple(
        f"layer{layer}.{n}"
        for n in ("self_qkv", "self_out", "cross_q", "cross_kv", "cross_out")
        + ("ff_in", "ff_in_bias", "ff_out", "ff_out_bias")
    )


def _xavier(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    bound = math.sqrt(6.0 / (shape[0] + shape[1]))
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def init_label_network(
    d: int, m: int, k: int, n_layers: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Fresh parameters: input projection, label embeddings, decoder layers, scoring head.

    Parameters
    ----------
    d : int
        Feature width (the model's hidden size).
    m : int
        Label-network width.
    k : int
        Number of classes (label embeddings).
    n_layers : int
    generator : torch.Generator

    Returns
    -------
    dict of str to Tensor
        ``in_proj`` (d, m), ``labels`` (k, m), per layer ``self_qkv`` (m, 3m),
        ``self_out`` / ``cross_q`` / ``cross_out`` (m, m), ``cross_kv`` (m, 2m),
        ``ff_in`` (m, f), ``ff_in_bias`` (f,), ``ff_out`` (f, m), ``ff_out_bias`` (m,);
        ``head`` (m,) and ``head_bias`` (k,). Xavier-uniform matrices, N(0, 1) labels.
    """
    f = FF_MULTIPLIER * m
    params = {
        "in_proj": _xavier((d, m), generator),
        "labels": torch.randn(k, m, generator=generator),
        "head": _xavier((m, 1), generator).squeeze(1),
        "head_bias": torch.zeros(k),
    }
    for layer in range(n_layers):
        shapes = [(m, 3 * m), (m, m), (m, m), (m, 2 * m), (m, m), (m, f), (f,), (f, m), (m,)]
        for name, shape in zip(layer_names(layer), shapes):
            params[name] = _xavier(shape, generator) if len(shape) == 2 else torch.zeros(shape)
    return params


def _dropout(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout drawn from ``generator`` (identity when it is None or rate is 0)."""
    if generator is None or rate <= 0:
        return x
    keep = torch.rand(x.shape, generator=generator) >= rate
    return x * keep / (1.0 - rate)


def _attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    heads: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head scaled dot-product attention.

    query (n, a, m), keys / values (n, b, m), mask (n, b) True where a key is real;
    returns (n, a, m).
    """
    n, a, m = query.shape
    b = keys.shape[1]
    q = query.view(n, a, heads, m // heads).transpose(1, 2)  # (n, h, a, m/h)
    k = keys.view(n, b, heads, m // heads).transpose(1, 2)  # (n, h, b, m/h)
    v = values.view(n, b, heads, m // heads).transpose(1, 2)  # (n, h, b, m/h)
    scores = q @ k.transpose(-1, -2) / math.sqrt(m // heads)  # (n, h, a, b)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (n, h, a, m/h)
    return out.transpose(1, 2).reshape(n, a, m)


def label_network_logits(
    params: dict[str, torch.Tensor],
    feats: torch.Tensor,
    mask: torch.Tensor,
    *,
    n_layers: int,
    heads: int,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Class logits: each label embedding attends over the features and is scored.

    Per layer (pre-norm residual blocks, as a transformer decoder): self-attention
    among the K labels, cross-attention from the labels to the projected features,
    a feed-forward block. The head scores each final label vector with a shared
    vector plus a per-class bias.

    Parameters
    ----------
    params : dict
        From :func:`init_label_network`.
    feats : Tensor, shape (n, p, d)
        Standardised frozen features: the states of p tokens per example.
    mask : Tensor, shape (n, p), bool
        True on real positions (at least one per row).
    n_layers, heads : int
    dropout : float
        Applied, during training only, to the projected features and the
        feed-forward activations.
    generator : torch.Generator or None
        Source of the dropout masks; None means evaluation (no dropout).

    Returns
    -------
    Tensor, shape (n, K)
    """
    m = params["in_proj"].shape[1]
    memory = F.layer_norm(feats @ params["in_proj"], (m,))  # (n, p, m)
    memory = _dropout(memory, dropout, generator)
    n, k = feats.shape[0], params["labels"].shape[0]
    y = params["labels"].expand(n, k, m)  # (n, K, m)
    for layer in range(n_layers):
        w = dict(
            zip(
                ("qkv", "so", "cq", "ckv", "co", "fi", "fib", "fo", "fob"),
                (params[name] for name in layer_names(layer)),
            )
        )
        h = F.layer_norm(y, (m,))
        q, kk, v = (h @ w["qkv"]).split(m, dim=-1)  # 3 x (n, K, m)
        y = y + _attention(q, kk, v, heads) @ w["so"]
        h = F.layer_norm(y, (m,))
        kk, v = (memory @ w["ckv"]).split(m, dim=-1)  # 2 x (n, p, m)
        y = y + _attention(h @ w["cq"], kk, v, heads, mask) @ w["co"]
        h = F.layer_norm(y, (m,))
        hidden = _dropout(F.gelu(h @ w["fi"] + w["fib"]), dropout, generator)  # (n, K, f)
        y = y + hidden @ w["fo"] + w["fob"]
    return F.layer_norm(y, (m,)) @ params["head"] + params["head_bias"]  # (n, K)
