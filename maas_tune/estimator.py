"""The estimator contract shared by the decoders and the prompt methods (scikit-learn's).

Every estimator of maas-tune (a decoder in :mod:`maas_tune.decoders`, a prompt method in
:mod:`maas_tune.methods`) derives from :class:`Estimator`:

- ``__init__`` only stores keyword hyper-parameters under their own names
  (:meth:`~Estimator.get_params` / :meth:`~Estimator.set_params` read and write them);
- ``fit`` returns ``self`` and sets the learned attributes, whose names end in ``_``
  (``classes_`` always); its keywords are the same for every estimator:
  ``fit(<inputs>, y=None, *, content_free=None)`` where the inputs are the
  :class:`~maas_tune.scores.Scores` ``X`` of a decoder, or the client, task and examples
  of a prompt method (which also takes ``corpus``, the unlabelled training texts);
- :attr:`~Estimator.needs_content_free` says, from the hyper-parameters alone, whether
  ``fit`` uses ``content_free`` (the scores of the content-free input), so a caller
  can skip that query.

The saving hooks (:meth:`~Estimator._state_tensors`, :meth:`~Estimator._state_meta` and
the pieces of ``_restore``) are here too, as are the hyper-parameter checks both families
make. :func:`torch_seed` is the one place a seed is derived from ``random_state``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from .errors import ConfigurationError, NotFittedError

if TYPE_CHECKING:
    import torch

__all__ = ["Estimator", "check_at_least_one", "check_positive", "state_tensors", "torch_seed"]


class Estimator:
    """Base of every estimator: hyper-parameters as ``__init__`` arguments, stored under the
    same names (scikit-learn's convention), the content-free question and the saving hooks.

    A subclass lists its learned tensors in ``_tensor_attrs`` and its learned JSON-able
    values in ``_meta_attrs``; :mod:`maas_tune.persistence` saves them through
    :meth:`_state_tensors` and :meth:`_state_meta` and restores them through ``_restore``.
    """

    #: Learned attributes saved as tensors (each a ``torch.Tensor``).
    _tensor_attrs: ClassVar[tuple[str, ...]] = ()
    #: Learned attributes saved in the JSON metadata (plain JSON values).
    _meta_attrs: ClassVar[tuple[str, ...]] = ()
    #: ``fit``'s call as the not-fitted error shows it (each family says its own).
    _fit_call: ClassVar[str] = "fit(...)"

    @property
    def needs_content_free(self) -> bool:
        """Whether ``fit`` uses the content-free scores (``fit(..., content_free=...)``).

        Decided by the hyper-parameters, not by ``fit``'s signature (every ``fit`` accepts
        ``content_free``): a caller can skip the content-free query when this is False.
        """
        return False

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(
            name
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters, as given to ``__init__``.

        Parameters
        ----------
        deep : bool
            Accepted for scikit-learn compatibility; there are no sub-estimators.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        """Set hyper-parameters by name; returns ``self``.

        Raises
        ------
        ConfigurationError
            If a name is not a hyper-parameter of this estimator.
        """
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ConfigurationError(
                    f"{type(self).__name__} has no parameter {name!r}; valid: {', '.join(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()
        }
        changed = [
            f"{name}={value!r}"
            for name, value in self.get_params().items()
            if defaults.get(name, inspect.Parameter.empty) != value
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _check_fitted(self, doing: str = "using it") -> None:
        """Raise :class:`NotFittedError` unless ``fit`` has run (``classes_`` is set)."""
        if not hasattr(self, "classes_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call {self._fit_call} before {doing}"
            )

    # ------------------------------------------------------------------ saving hooks
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors by name, for saving (contiguous, on CPU)."""
        self._check_fitted("saving it")
        return state_tensors({name: getattr(self, name) for name in self._tensor_attrs})

    def _state_meta(self) -> dict[str, Any]:
        """Learned JSON values by name, for saving (the caller saves ``classes_``, ``task_``)."""
        self._check_fitted("saving it")
        return {name: getattr(self, name) for name in self._meta_attrs}

    def _check_tensor_names(
        self, tensors: Mapping[str, torch.Tensor], expected: Iterable[str] | None = None
    ) -> None:
        """``ValueError`` unless the saved tensors are exactly ``expected`` (``_tensor_attrs``
        by default)."""
        names = set(self._tensor_attrs if expected is None else expected)
        if set(tensors) != names:
            raise ValueError(f"tensors expected {sorted(names)}, got {sorted(tensors)}")

    def _set_learned(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Set ``_meta_attrs`` from ``meta`` and ``_tensor_attrs`` from ``tensors``.

        Raises
        ------
        ValueError
            If ``meta`` lacks a learned value.
        """
        for name in self._meta_attrs:
            if name not in meta:
                raise ValueError(f"metadata lacks the learned value {name!r}")
            setattr(self, name, meta[name])
        for name in self._tensor_attrs:
            setattr(self, name, tensors[name])


def state_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` as they are saved: detached, on CPU, contiguous."""
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items()}


def check_at_least_one(est: object, names: Iterable[str]) -> None:
    """Raise a :class:`ConfigurationError` naming the first of ``est``'s ``names`` below 1."""
    for name in names:
        value = getattr(est, name)
        if value < 1:
            raise ConfigurationError(f"{name} must be >= 1, got {value}")


def check_positive(name: str, value: float) -> None:
    """Raise a :class:`ConfigurationError` unless ``value`` (the parameter ``name``) is > 0."""
    if not value > 0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")


def torch_seed(random_state: int | None, *, drawn: bool = False) -> int:
    """The seed of an estimator's torch generator, from its ``random_state``.

    Parameters
    ----------
    random_state : int or None
        None gives fresh entropy (a different seed on every call).
    drawn : bool
        False: the seed is ``random_state`` itself (the decoders, BDPL). True: the first
        draw of ``numpy.random.default_rng(random_state)`` (prompt tuning). Both are kept
        as they were, so published results stay reproducible.

    Returns
    -------
    int
        In ``[0, 2**63 - 1)`` when derived from entropy or drawn; ``random_state`` else.
    """
    if random_state is None or drawn:
        return int(np.random.default_rng(random_state).integers(2**63 - 1))
    return int(random_state)
