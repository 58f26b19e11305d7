"""Straightforward reference formulas the estimators are tested against."""

import numpy as np


def unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012, eq. 5 (square Gram matrices)."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))
