"""BDPL's numerics in pure torch: sampling prompts, the variance-reduced policy gradient, projection."""

from __future__ import annotations

import torch

__all__ = ["mode", "policy_gradient", "project_simplex", "sample_prompts"]


def sample_prompts(probs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` discrete prompts, each position independently from its categorical.

    Parameters
    ----------
    probs : Tensor, shape (L, N)
        One distribution over the N candidates per prompt position (rows sum to 1).
    n : int
        Prompts to draw (BDPL's sample size I).
    generator : torch.Generator

    Returns
    -------
    Tensor, shape (n, L), int64
        Candidate index of every position of every prompt.
    """
    draws = torch.multinomial(probs, n, replacement=True, generator=generator)  # (L, n)
    return draws.T.contiguous()


def mode(probs: torch.Tensor) -> torch.Tensor:
    """The most likely prompt, shape (L,): each position's argmax (what BDPL deploys)."""
    return probs.argmax(dim=-1)


def policy_gradient(
    probs: torch.Tensor, samples: torch.Tensor, losses: torch.Tensor
) -> torch.Tensor:
    """Variance-reduced score-function estimate of the gradient of the expected loss.

    ``g = 1/(I-1) * sum_k (L_k - mean(L)) * grad_p log P(S_k)``, where
    ``grad_{p_i} log P(S_k) = e_{s_ki} / p_{i, s_ki}`` for the categorical at position i
    (Diao et al., 2023; the reference code's form ``+1/p`` at the drawn entry and
    ``-1/p`` elsewhere is twice this, as the centred losses sum to zero).

    Parameters
    ----------
    probs : Tensor, shape (L, N)
    samples : Tensor, shape (I, L), int64
        The drawn prompts (I >= 2).
    losses : Tensor, shape (I,)
        The black-box loss of each drawn prompt.

    Returns
    -------
    Tensor, shape (L, N)
        Gradient with respect to ``probs``.
    """
    i, length = samples.shape
    if i < 2:
        raise ValueError(f"the variance-reduced estimate needs at least 2 samples, got {i}")
    centred = (losses - losses.mean()) / (i - 1)  # (I,)
    rows = torch.arange(length).expand(i, length)  # (I, L)
    weight = centred[:, None] / probs[rows, samples]  # (I, L)
    grad = torch.zeros_like(probs)  # (L, N)
    grad.index_put_((rows.reshape(-1), samples.reshape(-1)), weight.reshape(-1), accumulate=True)
    return grad


def project_simplex(x: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al., 2008).

    Parameters
    ----------
    x : Tensor, shape (L, N)

    Returns
    -------
    Tensor, shape (L, N)
        ``argmin_p ||p - x||`` with ``p >= 0`` and rows summing to 1: ``max(x - v, 0)``
        for the row's threshold ``v`` (BDPL's code finds the same ``v`` by bisection).
    """
    n = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)  # (L, N)
    css = u.cumsum(dim=-1) - 1.0  # (L, N)
    ks = torch.arange(1, n + 1, dtype=x.dtype)  # (N,)
    support = (u - css / ks) > 0  # (L, N), True on a prefix
    rho = support.sum(dim=-1, keepdim=True)  # (L, 1), >= 1
    v = css.gather(-1, rho - 1) / rho.to(x.dtype)  # (L, 1)
    return (x - v).clamp(min=0.0)
