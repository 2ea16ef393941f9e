"""Y-Tuning: learned label embeddings that attend over the input's cached token states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigurationError
from ..estimator import check_at_least_one, state_tensors, torch_seed
from ..scores import Scores
from ._label_attention import init_label_network, label_network_logits, layer_names
from ._math import descend, shrunk_variance
from ._select import choose_value
from .base import BaseDecoder, check_shapes, check_width, torch_threads

__all__ = ["YTuning", "feature_scale", "position_features"]

#: Prefix of the label network's tensors in a saved decoder.
PARAM_PREFIX = "net."
#: Weight, in inputs, of the pooled scale in each coordinate's scale (see :func:`feature_scale`).
SCALE_PRIOR_INPUTS = 8

#: Why Y-Tuning cannot run on scores without token states, and how to get them.
NO_TOKEN_FEATURES = (
    "Y-Tuning attends over the input's token features and these scores carry none; score "
    "with token_features=N: TransformersProvider(token_features=32) in process, or "
    "OpenAICompletionsProvider(url, model, strategy='extension', token_features=32) against "
    "`maas-tune serve` (hosted top_logprobs, chat and embeddings APIs cannot return them)"
)

#: Candidates for ``weight_decay`` when it is None (cross-validated on the shots).
WEIGHT_DECAY_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
#: The default ``weight_decay``: the best of its candidates on the dev protocol
#: (docs/dect-research.md), also used where cross-validation cannot run.
DEFAULT_WEIGHT_DECAY = 1.0


def position_features(X: Scores) -> tuple[torch.Tensor, torch.Tensor]:
    """The input's token states (Y-Tuning's keys and values) and their mask.

    Returns
    -------
    feats : Tensor, shape (n, N, d), float32
        ``X.token_features``: the last-layer states of each prompt's last ``N`` tokens.
    mask : Tensor, shape (n, N), bool
        True on real tokens; a row with none is treated as all real.

    Raises
    ------
    ConfigurationError
        If ``X`` carries no token features (:data:`NO_TOKEN_FEATURES` says how to get them).
    """
    if X.token_features is None or X.token_mask is None:
        raise ConfigurationError(NO_TOKEN_FEATURES)
    feats = torch.as_tensor(np.asarray(X.token_features, dtype=np.float32))  # (n, N, d)
    mask = torch.as_tensor(np.array(X.token_mask, dtype=bool))  # (n, N)
    mask[~mask.any(-1)] = True
    return feats, mask


def feature_scale(real: torch.Tensor, n_inputs: int) -> torch.Tensor:
    """Per-coordinate scale of the features, shrunk towards their pooled scale.

    Parameters
    ----------
    real : Tensor, shape (r, d)
        The training inputs' real token states.
    n_inputs : int
        How many inputs they come from.

    Returns
    -------
    Tensor, shape (d,)
        ``sqrt(w * var_j + (1 - w) * median(var))`` with ``w = n / (n + SCALE_PRIOR_INPUTS)``
        (:func:`~maas_tune.decoders._math.shrunk_variance`, as DecT's and the probe's
        ``scale_prior``).
    """
    # A coordinate's standard deviation from a handful of inputs is noise: from K = 2 rows
    # (1 shot, one state each) every standardised coordinate is exactly +-1, which erases
    # the differences in magnitude the label network should see. Shrinking each variance
    # towards the median variance (robust to the few huge coordinates a transformer's
    # states have) keeps them; the weight counts inputs, not tokens, because the tokens of
    # one input share its context and are far from independent draws. With 16 shots of 2
    # classes (32 inputs) the per-coordinate variance has 80% of the weight.
    var = shrunk_variance(real.var(0, unbiased=False), n_inputs, SCALE_PRIOR_INPUTS)  # (d,)
    return var.sqrt().clamp(min=1e-6)  # (d,)


class YTuning(BaseDecoder):
    """Y-Tuning (Liu, An & Qiu, arXiv 2202.09817): label representations over frozen features.

    The paper's abstract: "Y-tuning learns dense representations for labels Y defined
    in a given task and aligns them to fixed feature representation. Without tuning the
    features of input text and model parameters, Y-tuning is both parameter-efficient
    and training-efficient." Here each class has
    a learned embedding; a small transformer decoder lets the K label embeddings attend
    to each other and, through cross-attention, to the frozen states of the input's
    tokens (``X.token_features``: the last layer's states of the prompt's last ``N``
    tokens, standardised with the training inputs' statistics and projected to
    ``d_model``); each resulting label vector is scored by a shared linear head, and a
    softmax over the K scores gives the prediction. Only the label network is trained
    (AdamW, full batch, cross-entropy); the language model is never touched.

    **Needs token features**: scores from a provider asked for ``token_features=N``,
    which the in-process provider and ``maas-tune serve``'s extension can give and
    hosted top_logprobs / chat / embeddings APIs cannot (a :class:`ConfigurationError`
    says so). With one state per input the attention softmax would be 1 and the query
    weights would do nothing.

    **Cost.** No query beyond the one per example that scores it (the token states come
    with its answer and are cached with it); trains locally.

    Parameters
    ----------
    d_model : int, default 64
    n_heads : int, default 4
        Must divide ``d_model``.
    n_layers : int, default 1
    dropout : float, default 0.1
    epochs : int, default 300
    learning_rate : float, default 1e-3
    weight_decay : float or None, default 1.0
        AdamW's decoupled weight decay (chosen on the dev protocol); None chooses it from
        ``weight_decay_grid`` by cross-validation on the training rows, the procedure
        DecT chooses ``lam`` by (:mod:`~maas_tune.decoders._select`; 1.0 where a class
        has one row).
    weight_decay_grid : sequence of float
        Candidates for ``weight_decay`` when it is None.
    n_folds : int, default 4
        Cross-validation folds, capped by the smallest class count.
    random_state : int or None
    n_threads : int or None, default 1
        Torch intra-op threads while fitting and predicting.

    Attributes
    ----------
    classes_ : np.ndarray of str, shape (K,)
    mean_, scale_ : torch.Tensor, shape (d,)
        Standardisation of the features (over training inputs and real tokens; the scale
        is shrunk towards the pooled scale when there are few inputs, see
        :func:`feature_scale`).
    params_ : dict of str to torch.Tensor
        The label network (see :func:`~maas_tune.decoders._label_attention.init_label_network`).
    """

    def __init__(
        self,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 1,
        dropout: float = 0.1,
        epochs: int = 300,
        learning_rate: float = 1e-3,
        weight_decay: float | None = DEFAULT_WEIGHT_DECAY,
        weight_decay_grid: Sequence[float] = WEIGHT_DECAY_GRID,
        n_folds: int = 4,
        random_state: int | None = None,
        n_threads: int | None = 1,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.dropout = dropout
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.weight_decay_grid = weight_decay_grid
        self.n_folds = n_folds
        self.random_state = random_state
        self.n_threads = n_threads

    def fit(
        self,
        X: Scores,
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
    ) -> YTuning:
        """Train the label network on scored examples with token features; returns ``self``.

        ``content_free`` is ignored (the contract's keyword of every estimator).
        """
        self._check_params()
        target = self._encode_y(X, y)
        feats, mask = position_features(X)  # (n, p, d), (n, p)
        real = feats[mask]  # (r, d)
        mean = real.mean(0)
        scale = feature_scale(real, len(X))  # (d,)
        generator = torch.Generator().manual_seed(torch_seed(self.random_state))
        with torch_threads(self.n_threads):
            self.weight_decay_, self.cv_loss_ = choose_value(
                self, "weight_decay", self.weight_decay_grid, DEFAULT_WEIGHT_DECAY, X, target
            )
            params = init_label_network(
                feats.shape[-1], self.d_model, len(X.labels), self.n_layers, generator
            )
            self.params_ = self._train(params, (feats - mean) / scale, mask, target, generator)
        self.mean_, self.scale_ = mean, scale
        self._set_classes(X)
        return self

    def _train(
        self,
        params: dict[str, torch.Tensor],
        feats: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            list(params.values()), lr=self.learning_rate, weight_decay=self.weight_decay_
        )
        descend(
            optimizer,
            lambda: F.cross_entropy(self._logits(params, feats, mask, generator), target),
            self.epochs,
        )
        return {name: p.detach() for name, p in params.items()}

    def _logits(
        self,
        params: dict[str, torch.Tensor],
        feats: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return label_network_logits(
            params,
            feats,
            mask,
            n_layers=self.n_layers,
            heads=self.n_heads,
            dropout=self.dropout,
            generator=generator,
        )

    def _decision_function(self, X: Scores) -> torch.Tensor:
        feats, mask = position_features(X)
        check_width(feats, self.mean_.shape[0], type(self).__name__, "token states")
        return self._logits(self.params_, (feats - self.mean_) / self.scale_, mask)  # (n, K)

    def _check_params(self) -> None:
        check_at_least_one(self, ("d_model", "n_heads", "n_layers", "epochs"))
        if self.d_model % self.n_heads:
            raise ConfigurationError(
                f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigurationError(f"dropout must lie in [0, 1), got {self.dropout}")

    # ------------------------------------------------------------------ persistence
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        self._check_fitted("saving it")
        tensors = {"mean_": self.mean_, "scale_": self.scale_}
        tensors.update({PARAM_PREFIX + k: v for k, v in self.params_.items()})
        return state_tensors(tensors)

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        names = self._param_tensor_names()
        self._check_tensor_names(tensors, ["mean_", "scale_", *(PARAM_PREFIX + n for n in names)])
        classes = self._saved_classes(meta)
        self.mean_, self.scale_ = tensors["mean_"], tensors["scale_"]
        n = len(PARAM_PREFIX)
        self.params_ = {k[n:]: v for k, v in tensors.items() if k.startswith(PARAM_PREFIX)}
        self.classes_ = np.array(classes)
        self._check_state(len(classes))

    def _param_tensor_names(self) -> list[str]:
        names = ["in_proj", "labels", "head", "head_bias"]
        return names + [n for layer in range(self.n_layers) for n in layer_names(layer)]

    def _check_state(self, k: int) -> None:
        d = self.mean_.shape[0]
        m = self.d_model
        expected = {"in_proj": (d, m), "labels": (k, m), "head": (m,), "head_bias": (k,)}
        check_shapes({"mean_": (d,), "scale_": (d,)}, vars(self))
        check_shapes(expected, self.params_)
        self._check_layers(d, k)

    def _check_layers(self, d: int, k: int) -> None:
        """Every tensor of the restored label network has the shape a fresh one would.

        The checks above cover the outer tensors only; a wrong layer tensor would fail
        inside torch at the first prediction. The reference is built on the meta device:
        shapes without memory, whatever ``d_model`` claims.
        """
        with torch.device("meta"):
            expected = init_label_network(d, self.d_model, k, self.n_layers, torch.Generator())
        shapes = {name: tuple(reference.shape) for name, reference in expected.items()}
        check_shapes(shapes, self.params_, prefix=PARAM_PREFIX)
