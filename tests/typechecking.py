"""The run-time type checker that the tests apply to the package (jaxtyping + beartype).

beartype's numeric tower is on, so an ``int`` is accepted where a ``float`` is
annotated (PEP 484), as Python callers expect. pytest names it in ``--jaxtyping-packages``
(pyproject.toml); the package itself never imports it.
"""

from beartype import BeartypeConf, beartype

__all__ = ["typechecker"]

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
