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

:func:`torch_seed` is the one place a seed is derived from ``random_state``.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from .errors import ConfigurationError

__all__ = ["Estimator", "torch_seed"]


class Estimator:
    """Base of every estimator: hyper-parameters as ``__init__`` arguments, stored under the
    same names (scikit-learn's convention), and the content-free question."""

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
