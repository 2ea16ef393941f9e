"""scikit-learn style hyper-parameters: ``get_params``, ``set_params`` and a short ``repr``."""

from __future__ import annotations

import inspect
from typing import Any

from .errors import ConfigurationError

__all__ = ["HyperParameters"]


class HyperParameters:
    """Mixin: the hyper-parameters of an estimator are the arguments of its ``__init__``,
    stored under the same names (scikit-learn's convention)."""

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
