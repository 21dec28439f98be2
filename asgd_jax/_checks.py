"""Validation shared by the library's constructors: one-line ``ValueError``\\ s for concrete values.

Traced values (inside ``jit``/``vmap``) cannot be checked here; the constructors
document what happens to them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def concrete(value):
    """``value`` as a NumPy array, or ``None`` if it is traced."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def is_value(value, target) -> bool:
    """Whether ``value`` is concrete, scalar and equal to ``target``."""
    c = concrete(value)
    return c is not None and c.shape == () and c == target


def python_int(name: str, value, minimum: int) -> int:
    """A static Python int ``>= minimum`` (a shape-fixing argument such as ``max_workers``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}.")
    return int(value)


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """Checks a concrete scalar integer in ``[minimum, maximum]`` (traced values pass unchecked)."""
    c = concrete(value)
    if c is None:
        return
    if c.shape != () or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"{name} must be a scalar integer, got {value!r}.")
    if int(c) < minimum or (maximum is not None and int(c) > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {int(c)}.")


def check_number(name: str, value, *, minimum: float | None = None, positive: bool = False) -> None:
    """Checks a concrete finite number (every element of an array), ``> 0`` or ``>= minimum``."""
    c = concrete(value)
    if c is None:
        return
    try:
        c = np.asarray(c, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if positive and not np.all(c > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    if minimum is not None and not np.all(c >= minimum):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")


def static_bound(name: str, value, bound, bound_name: str, minimum: int = 1) -> int:
    """The static size for a possibly traced count ``value`` bounded by ``bound`` (``None``: ``value``)."""
    if bound is not None:
        bound = python_int(bound_name, bound, minimum)
    c = concrete(value)
    if c is None:
        if bound is None:
            raise ValueError(f"a traced {name} needs a static bound; pass {bound_name}=<largest {name}>.")
        return bound
    if c.shape != () or not np.issubdtype(c.dtype, np.integer) or int(c) < minimum:
        raise ValueError(f"{name} must be a scalar integer >= {minimum}, got {value!r}.")
    if bound is None:
        return int(c)
    if int(c) > bound:
        raise ValueError(f"{name}={int(c)} exceeds {bound_name}={bound}; raise {bound_name}.")
    return bound


def as_key(key) -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or a raw ``uint32[2]`` key."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.shape == () and jnp.issubdtype(key.dtype, jnp.integer):
        return jax.random.key(key)
    return jax.random.wrap_key_data(key.astype(jnp.uint32))

