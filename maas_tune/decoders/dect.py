"""Decoder Tuning (DecT, Cui et al., ACL 2023): prototypes on hidden states plus model scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigurationError
from ..estimator import check_at_least_one, torch_seed
from ..scores import Scores
from . import _math
from ._inputs import features, standardizer
from ._select import CV_TEMPERATURES, n_cv_folds, scaled_cv_loss
from .base import (
    BaseDecoder,
    check_shapes,
    check_width,
    content_free_tensor,
    label_scores,
    torch_threads,
)

__all__ = ["DecT"]

#: Candidate weights of the model scores tried by cross-validation.
DEFAULT_LAM_GRID: tuple[float, ...] = (0.0625, 0.25, 1.0, 4.0)
_CALIBRATIONS = ("none", "mean", "content_free")
_CV_METRICS = ("scaled_log_loss", "log_loss")
_RADIUS_INITS = ("projected", "normalized")
_LAM_SELECTIONS = ("weighted", "best")
_VOTE_TEMPERATURES = ("cv", "one")
#: Hyper-parameters that take one of a few names, and those names.
_CHOICES = {
    "calibration": _CALIBRATIONS,
    "lam_selection": _LAM_SELECTIONS,
    "cv_metric": _CV_METRICS,
    "radius_init": _RADIUS_INITS,
    "vote_temperature": _VOTE_TEMPERATURES,
}
#: Ensemble members lighter than this are dropped (and the rest renormalised).
_MIN_MEMBER_WEIGHT = 1e-4


class _Problem(NamedTuple):
    """What every DecT model of one fit trains on, and starts from."""

    h: torch.Tensor  # (n, p) standardised features
    scores: torch.Tensor  # (n, K) calibrated label scores
    target: torch.Tensor  # (n,) class indices
    weight0: torch.Tensor  # (p, m) initial projection, shared by every model
    prototypes: torch.Tensor  # (K, m) fixed


class _Members(NamedTuple):
    """What cross-validation leaves: the chosen ``lam``, the CV losses, the ensemble."""

    lam: float
    cv_loss: list[float]
    weight: torch.Tensor  # (p, E, m)
    radii: torch.Tensor  # (E, K)
    lams: torch.Tensor  # (E,)
    weights: torch.Tensor  # (E,), summing to 1
    temps: torch.Tensor  # (E,), each member's logits are multiplied by its temperature

    @classmethod
    def empty(cls, lam: float) -> _Members:
        """No cross-validation: ``lam`` given or the fallback; one model is trained on all rows."""
        none = torch.empty(0)
        return cls(lam, [], none, none, none, none, none)


class DecT(BaseDecoder):
    """Decoder Tuning: ``logit_k = -(||normalize(W h) - P_k|| - r_k) + lam * s_k``.

    ``h`` is the (standardised) hidden state, ``W`` a trained (d, proto_dim)
    projection, ``P_k`` fixed random (Xavier) prototypes, ``r_k`` trained radii and
    ``s_k`` the model's calibrated label log-probabilities; cross-entropy, full-batch
    Adam. :meth:`paper` gives the published recipe. The defaults differ from it
    where the dev protocol (``python benchmarks/dect_research.py``: pools from the
    bundled training splits, never the test splits) said so; what was chosen on what
    is in ``docs/dect-research.md``. In short: ``lam`` is chosen by 4-fold
    cross-validation on the shots (held-out log-loss at each grid point's best
    temperature), the fold models of every grid point are kept and vote with
    pseudo-BMA weights at that same temperature, hidden states are standardised
    and scores calibrated by their mean over the shots.

    Parameters
    ----------
    lam : float or None
        Weight of the model scores; None selects it from ``lam_grid``. All
        (grid point × fold) models train at once as one batched tensor problem.
    lam_grid : sequence of float
        Candidates for ``lam`` when it is None.
    lam_fallback : float
        ``lam`` when cross-validation is impossible (a class has a single shot).
    n_folds : int
        Cross-validation folds, capped by the smallest class count.
    cv_metric : {"scaled_log_loss", "log_loss"}
        Held-out criterion for choosing ``lam``: log-loss at the best of a few
        temperatures per grid point, or plain log-loss.
    refit : bool
        After choosing ``lam``, train one model on all rows instead of keeping the
        fold models as an ensemble.
    lam_selection : {"weighted", "best"}
        How cross-validation turns into a decoder. "weighted" keeps the fold models
        of every grid point and averages their log-probabilities with pseudo-BMA
        weights, ``w_g ∝ exp(-n · cv_loss_g)`` (the held-out likelihood of each
        ``lam``; Yao et al. 2018), so near-ties are shared instead of decided by
        noise. "best" keeps only the fold models of the best grid point.
    vote_temperature : {"cv", "one"}
        The temperature a member's weight is measured at and it votes at, the same
        one either way (pseudo-BMA needs it): "cv" the temperature its grid point
        was scored at by ``cv_metric``, "one" temperature 1 (its weight then comes
        from its held-out loss at temperature 1).
    calibration : {"mean", "content_free", "none"}
        Subtracted from the renormalised label log-probabilities: their mean over
        the training rows (no extra query), the content-free input's (needs
        ``fit(..., content_free=...)``), or nothing.
    standardize : bool
        Standardise features with the training mean and deviation before ``W``.
    scale_prior : float
        Pseudo-rows of the pooled variance mixed into each feature's variance
        when standardising (see :func:`~maas_tune.decoders._math.fit_standardizer`);
        keeps the 1-shot case, where every standardised coordinate would be +-1,
        well-conditioned.
    proto_dim : int
        Dimension of the prototype space.
    epochs, lr, weight_decay : int, float, float
        Full-batch Adam steps, learning rate, L2 penalty on ``W``.
    radius_init : {"projected", "normalized"}
        ``r_k`` starts as the mean distance of class k's rows to their centre in
        the raw projected space (reference code) or after normalisation.
    use_hidden : bool, default True
        False ignores hidden states even where the scores carry them: the
        logprobs-only variant (``dect-logprobs``), what DecT can do on an API that
        returns label log-probs and nothing else.
    random_state : int or None
        Seed of ``W``'s initialisation, the prototypes and the folds.
    n_threads : int or None
        Torch intra-op threads while fitting and predicting (see
        :func:`~maas_tune.decoders.base.torch_threads`); None keeps torch's setting.

    Attributes
    ----------
    classes_ : np.ndarray of str, shape (K,)
    lam_ : float
        The given weight, the fallback, or the grid point with the lowest CV loss.
    cv_loss_ : list of float
        Cross-validation criterion per ``lam_grid`` entry ([] without CV).
    uses_hidden_ : bool
        False in scores-only mode.
    feature_mean_, feature_scale_ : torch.Tensor, shape (p,)
        Standardisation (zeros and ones when off); p = d, or K in scores-only mode.
    score_offset_ : torch.Tensor, shape (K,)
        Calibration subtracted from the renormalised log-probabilities.
    projection_ : torch.Tensor, shape (E, p, proto_dim)
        ``W`` of each of the E ensemble members (E = n_folds, or 1).
    prototypes_ : torch.Tensor, shape (K, proto_dim)
    radii_ : torch.Tensor, shape (E, K)
    member_lams_, member_weights_, member_temps_ : torch.Tensor, shape (E,)
        Each ensemble member's ``lam``, its weight in the vote (summing to 1) and the
        temperature its logits are multiplied by before it votes.

    Notes
    -----
    Scores-only mode (``X.hidden is None``): the K calibrated scores stand in for
    the hidden state. The decoder keeps its class re-weighting and bias but loses
    everything the hidden state knows beyond the K label words, so expect about the
    accuracy of :class:`ScoreLogisticRegression`, not of DecT on hidden states.
    """

    _tensor_attrs: ClassVar[tuple[str, ...]] = (
        "feature_mean_",
        "feature_scale_",
        "score_offset_",
        "projection_",
        "prototypes_",
        "radii_",
        "member_lams_",
        "member_weights_",
        "member_temps_",
    )
    _meta_attrs: ClassVar[tuple[str, ...]] = ("lam_", "cv_loss_", "uses_hidden_")

    def __init__(
        self,
        *,
        lam: float | None = None,
        lam_grid: Sequence[float] = DEFAULT_LAM_GRID,
        lam_fallback: float = 4.0,
        n_folds: int = 4,
        cv_metric: str = "scaled_log_loss",
        refit: bool = False,
        lam_selection: str = "weighted",
        vote_temperature: str = "cv",
        calibration: str = "mean",
        standardize: bool = True,
        scale_prior: float = 4.0,
        proto_dim: int = 64,
        epochs: int = 30,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        radius_init: str = "projected",
        use_hidden: bool = True,
        random_state: int | None = None,
        n_threads: int | None = 1,
    ) -> None:
        self.lam = lam
        self.lam_grid = lam_grid
        self.lam_fallback = lam_fallback
        self.n_folds = n_folds
        self.cv_metric = cv_metric
        self.refit = refit
        self.lam_selection = lam_selection
        self.vote_temperature = vote_temperature
        self.calibration = calibration
        self.standardize = standardize
        self.scale_prior = scale_prior
        self.proto_dim = proto_dim
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.radius_init = radius_init
        self.use_hidden = use_hidden
        self.random_state = random_state
        self.n_threads = n_threads

    @property
    def needs_content_free(self) -> bool:
        """True only with ``calibration="content_free"`` (e.g. :meth:`paper`)."""
        return self.calibration == "content_free"

    @classmethod
    def paper(cls, shots: int = 16, *, random_state: int | None = None) -> DecT:
        """DecT with the published settings (thunlp/DecT ``run_dect.py`` defaults).

        ``lam = 1/shots``, raw hidden states, 128-d prototypes, 30 epochs of Adam
        at lr 0.01, radii from the raw projections, content-free calibration
        (``fit`` needs ``content_free``). The reference code divides raw
        label-word logits by the content-free ones; with log-probabilities this
        is Zhao et al.'s ``log p - log p_cf`` instead.
        """
        if shots < 1:
            raise ConfigurationError(f"shots must be >= 1, got {shots}")
        return cls(
            lam=1.0 / shots,
            calibration="content_free",
            standardize=False,
            proto_dim=128,
            epochs=30,
            lr=0.01,
            weight_decay=0.0,
            radius_init="projected",
            random_state=random_state,
        )

    def fit(
        self,
        X: Scores,
        y: Sequence[Any] | np.ndarray | None = None,
        *,
        content_free: np.ndarray | Sequence[float] | None = None,
    ) -> DecT:
        """Fit on scored examples; returns ``self``.

        Parameters
        ----------
        X : Scores, n examples
        y : array-like of str or int, shape (n,)
        content_free : array-like, shape (K,), optional
            Label log-probabilities of the content-free input; required when
            ``calibration == "content_free"``, ignored otherwise.
        """
        self._validate_params()
        with torch_threads(self.n_threads):
            return self._fit(X, y, content_free)

    def _fit(self, X: Scores, y: Sequence[Any] | np.ndarray | None, content_free: Any) -> DecT:
        target = self._encode_y(X, y)  # (n,)
        k = len(X.labels)
        generator = torch.Generator().manual_seed(torch_seed(self.random_state))
        offset = self._score_offset(X, content_free)  # (K,)
        scores = label_scores(X) - offset  # (n, K)
        feats, uses_hidden = features(X, scores, need_hidden=None if self.use_hidden else False)
        mean, scale = standardizer(feats, self.standardize, self.scale_prior)
        h = (feats - mean) / scale  # (n, p)
        prototypes = _math.init_prototypes(k, self.proto_dim, generator)  # (K, m)
        weight0 = _math.init_projection(h.shape[1], self.proto_dim, generator)  # (p, m)
        problem = _Problem(h, scores, target, weight0, prototypes)
        members = self._fit_members(problem, generator)
        lam, weight, radii = members.lam, members.weight, members.radii
        member_lams, member_weights, member_temps = members.lams, members.weights, members.temps
        if self.refit or not members.cv_loss:
            weight, radii = self._train(problem, [lam])
            member_lams, member_weights, member_temps = torch.tensor([lam]), *torch.ones(2, 1)
        self.lam_, self.cv_loss_, self.uses_hidden_ = lam, members.cv_loss, uses_hidden
        self.member_lams_, self.member_weights_ = member_lams, member_weights  # (E,), (E,)
        self.member_temps_ = member_temps  # (E,)
        self.feature_mean_, self.feature_scale_, self.score_offset_ = mean, scale, offset
        self.projection_ = weight.permute(1, 0, 2).contiguous()  # (E, p, m)
        self.prototypes_, self.radii_ = prototypes, radii  # (K, m), (E, K)
        self._set_classes(X)
        return self

    def _decision_function(self, X: Scores) -> torch.Tensor:
        scores = label_scores(X) - self.score_offset_  # (n, K)
        feats, _uses_hidden = features(X, scores, need_hidden=self.uses_hidden_)
        feats = check_width(feats, self.feature_mean_.shape[0], type(self).__name__)  # (n, p)
        h = (feats - self.feature_mean_) / self.feature_scale_  # (n, p)
        z = _math.project(h, self.projection_.permute(1, 0, 2))  # (n, E, m)
        logits = _math.dect_logits(z, self.prototypes_, self.radii_, scores, self.member_lams_)
        # members vote at the temperature their weight was measured at, by their weighted
        # mean log-probability (a weighted geometric mean)
        logp = torch.log_softmax(logits * self.member_temps_.view(1, -1, 1), dim=-1)  # (n, E, K)
        return torch.einsum("nek,e->nk", logp, self.member_weights_)  # (n, K)

    # ------------------------------------------------------------------ training
    def _train(
        self, problem: _Problem, lams: list[float], weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train ``len(lams)`` models (one per column of ``weights``, all rows if None)."""
        h, scores, target, weight0, prototypes = problem
        b = len(lams)
        weights = torch.ones(h.shape[0], b) if weights is None else weights  # (n, B)
        weight0 = weight0.unsqueeze(1).expand(-1, b, -1)  # (p, B, m)
        normalize = self.radius_init == "normalized"
        u = _math.project(h, weight0, normalize=normalize)  # (n, B, m)
        radii0 = _math.class_mean_distance(u, target, weights, prototypes.shape[0])  # (B, K)
        lam = torch.tensor(lams, dtype=torch.float32)  # (B,)
        return _math.train_dect(
            h,
            scores,
            target,
            weights,
            lam,
            weight0,
            prototypes,
            radii0,
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
        )

    def _fit_members(self, problem: _Problem, generator: torch.Generator) -> _Members:
        """Cross-validate ``lam``; return the best, the CV losses and the ensemble members.

        Every (grid point, fold) model trains at once. The members kept (E of them)
        come back as projections (p, E, m), radii (E, K), their ``lam``, weight and
        voting temperature (E,) each; all empty, like the losses, when ``lam`` is
        fixed or CV is impossible.
        """
        if self.lam is not None:
            return _Members.empty(float(self.lam))
        h, scores, target, _, prototypes = problem
        grid = [float(v) for v in self.lam_grid]
        n, n_folds = h.shape[0], n_cv_folds(target, prototypes.shape[0], self.n_folds)
        if n_folds < 2:
            return _Members.empty(float(self.lam_fallback))
        fold = _math.stratified_folds(target, n_folds, generator)  # (n,)
        heldout = F.one_hot(fold, n_folds).float().repeat(1, len(grid))  # (n, G*F), grid-major
        lams = torch.tensor([lam for lam in grid for _ in range(n_folds)])  # (G*F,)
        weight, radii = self._train(problem, lams.tolist(), 1.0 - heldout)
        temps = CV_TEMPERATURES if self.cv_metric == "scaled_log_loss" else (1.0,)
        with torch.no_grad():
            logits = _math.dect_logits(_math.project(h, weight), prototypes, radii, scores, lams)
            nll = _math.heldout_nll(logits, target, heldout, torch.tensor(temps))  # (n, G*F, T)
        nll = nll.view(n, len(grid), n_folds, -1).sum(2)  # (n, G, T)
        cv_loss, best_t = scaled_cv_loss(nll)  # (G,), (G,)
        best = int(torch.argmin(cv_loss))
        if self.vote_temperature == "cv":  # members vote at the temperature they were scored at
            vote_t, vote_loss = torch.tensor(temps)[best_t], cv_loss
        else:  # members vote at T = 1, so they are weighted by their loss at T = 1
            vote_t, vote_loss = torch.ones(len(grid)), nll[:, :, temps.index(1.0)].mean(0)
        grid_w = _math.pseudo_bma_weights(vote_loss, n)  # (G,)
        if self.lam_selection == "best":
            grid_w = F.one_hot(torch.tensor(best), len(grid)).float()
        member_w = grid_w.repeat_interleave(n_folds) / n_folds  # (G*F,)
        keep = member_w > _MIN_MEMBER_WEIGHT  # members that cannot move a vote are dropped
        return _Members(
            grid[best],
            cv_loss.tolist(),
            weight[:, keep],
            radii[keep],
            lams[keep],
            member_w[keep] / member_w[keep].sum(),
            vote_t.repeat_interleave(n_folds)[keep],
        )

    def _score_offset(self, X: Scores, content_free: Any) -> torch.Tensor:
        """What calibration subtracts from the renormalised label log-probabilities, shape (K,)."""
        k = len(X.labels)
        if self.calibration == "content_free":
            return content_free_tensor(content_free, k)
        if self.calibration == "mean":
            return label_scores(X).mean(dim=0)
        return torch.zeros(k)

    def _validate_params(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigurationError(
                    f"{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.lam is None and len(self.lam_grid) == 0:
            raise ConfigurationError("lam_grid must not be empty when lam is None")
        check_at_least_one(self, ("proto_dim", "epochs", "n_folds"))
        if not self.lr > 0 or self.weight_decay < 0 or self.scale_prior < 0:
            raise ConfigurationError("lr must be > 0, weight_decay and scale_prior >= 0")

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if "member_temps_" not in tensors and "member_lams_" in tensors:
            # saved before members had a temperature: they voted at temperature 1
            tensors = {**tensors, "member_temps_": torch.ones_like(tensors["member_lams_"])}
        super()._restore(tensors, meta)

    def _check_state(self, k: int) -> None:
        e, p, m = self.projection_.shape
        expected = {
            "feature_mean_": (p,),
            "feature_scale_": (p,),
            "score_offset_": (k,),
            "projection_": (e, p, m),
            "prototypes_": (k, m),
            "radii_": (e, k),
            "member_lams_": (e,),
            "member_weights_": (e,),
            "member_temps_": (e,),
        }
        check_shapes(expected, vars(self))
