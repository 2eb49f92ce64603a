"""scikit-learn's private API, in one place.

Private name: ``sklearn.utils._param_validation.InvalidParameterError``.
Why: an estimator validates its hyperparameters at ``fit`` time and raises this error (a
subclass of both ``ValueError`` and ``TypeError``) for a value out of range; training turns it
into a message that names the user's parameter. scikit-learn does not export it publicly.
Pinned: scikit-learn >=1.9,<1.10 (pyproject.toml).
Contract test: tests/unit/test_adapters.py::test_sklearn_invalid_parameter_error.
"""

from __future__ import annotations

from sklearn.utils._param_validation import InvalidParameterError

__all__ = ["InvalidParameterError"]
