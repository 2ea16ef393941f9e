"""Soft-prompt forward pass through a transformers causal LM: embeddings in, class log-probs out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

__all__ = ["class_scores", "embed_with_prompt", "frozen", "initial_prompt"]


@contextlib.contextmanager
def frozen(model: Any) -> Iterator[None]:
    """Turn off gradients of every model weight while the block runs (restored after)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def initial_prompt(
    model: Any, label_ids: Sequence[int], text_ids: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """Lester et al.'s class-label initialisation of an ``n``-token soft prompt.

    The first positions are the embeddings of the label words (one each, in class
    order, while ``n`` allows), the others embeddings of tokens drawn from the
    training prompts, so every vector starts in the model's input-embedding space.

    Parameters
    ----------
    model : transformers causal LM
    label_ids : sequence of int, length W
    text_ids : Tensor, shape (t,), int64
        Token ids of the training prompts (special tokens removed) to draw from.
    n : int
    generator : torch.Generator

    Returns
    -------
    Tensor, shape (n, d), float32
        As the input embedding layer outputs them (Gemma's scaling included).
    """
    ids = torch.as_tensor(list(label_ids)[:n], dtype=torch.int64)
    if len(ids) < n:
        draw = torch.randint(len(text_ids), (n - len(ids),), generator=generator)
        ids = torch.cat([ids, text_ids[draw]])
    with torch.no_grad():
        return model.get_input_embeddings()(ids).float().clone()  # (n, d)


def embed_with_prompt(
    model: Any, tokenizer: Any, prompts: Sequence[str], soft: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input embeddings of ``[BOS] soft-prompt prompt-tokens``, left-padded.

    Parameters
    ----------
    prompts : sequence of str, length b
    soft : Tensor, shape (n, d)

    Returns
    -------
    embeds : Tensor, shape (b, T, d)
    mask : Tensor, shape (b, T), int64
        1 on real positions.
    positions : Tensor, shape (b, T), int64
        Counted from the first real position, so padding does not shift them.
    """
    rows = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    embed = model.get_input_embeddings()
    parts = []
    for ids in rows:
        head = ids[:1] if bos is not None and ids[:1] == [bos] else []
        tok = embed(torch.as_tensor(ids, dtype=torch.int64))  # (t, d)
        parts.append(torch.cat([tok[: len(head)], soft.to(tok.dtype), tok[len(head) :]]))
    length = max(p.shape[0] for p in parts)
    d = soft.shape[1]
    embeds = torch.zeros(len(parts), length, d, dtype=parts[0].dtype)  # (b, T, d)
    mask = torch.zeros(len(parts), length, dtype=torch.int64)  # (b, T)
    for i, p in enumerate(parts):
        embeds[i, length - p.shape[0] :] = p
        mask[i, length - p.shape[0] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions


def class_scores(
    model: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    token_ids: torch.Tensor,
    word_class: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Class log-probabilities of the next token, normalised over the full vocabulary.

    Parameters
    ----------
    embeds, mask, positions
        From :func:`embed_with_prompt`.
    token_ids : Tensor, shape (W,), int64
        Label-word tokens.
    word_class : Tensor, shape (W,), int64
        Class of each label word.
    k : int
        Number of classes.

    Returns
    -------
    Tensor, shape (b, K)
        Per class, the log of the summed probabilities of its words (as
        :class:`~maas_tune.client.Client` computes them from a provider's answer).
    """
    out = model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=1,
        use_cache=False,
    )
    logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (b, V)
    words = logprobs[:, token_ids]  # (b, W)
    cols = [torch.logsumexp(words[:, word_class == c], dim=-1) for c in range(k)]
    return torch.stack(cols, dim=-1)  # (b, K)
