"""``@once``: a zero-argument method computed on first call and remembered on the instance.

The row engines use it for their marginals and pairwise tables, which several public members
(covariance, entropy, gradients) read. Callers must not mutate the returned lists.
"""

from __future__ import annotations

import functools

__all__ = ["once"]


def once(method):
    key = f"_once_{method.__name__}"

    @functools.wraps(method)
    def wrapper(self):
        if key not in self.__dict__:
            self.__dict__[key] = method(self)
        return self.__dict__[key]
    return wrapper
