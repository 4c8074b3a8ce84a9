"""Point-group symmetry as RELION names and orients it (``--sym``; REFINE_SPEC.md §6.1).

Each group is generated, as RELION does in ``symmetries.cpp``, from a short list
of rotation axes, mirror planes and the inversion, then closed under matrix
products. Axes are in map coordinates ``(x, y, z)``. The axis directions are
RELION's, written here in closed form (RELION lists them as decimals, e.g. the
tetrahedral 2-fold ``(0, 0.816496, 0.577350)`` is ``(0, sqrt(2/3), sqrt(1/3))``),
so that the closure is exact to float64 rounding (RELION's icosahedral decimals are
off by up to ~1e-8, e.g. 0.8944271932547096 for 2/sqrt(5) = 0.8944271909999159).

Operators ``R`` act on map coordinates: the map is unchanged by ``x -> R x``,
poses ``A`` and ``A @ R`` give the same image, and a viewing direction ``d``
goes to ``R.T @ d`` (``geometry.conventions``). Improper operators (mirrors,
inversion; determinant -1) are kept, as RELION keeps them when it symmetrises a
reconstruction and reduces the sampling; ``SymmetryGroup.rotations`` holds the
proper ones for pose arithmetic. RELION also pairs the operators built from its
inversion generator with a left matrix ``diag(1, 1, -1)`` acting on Euler
angles; cryorefine does not use it.
"""

import math
import re
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from cryorefine.errors import InputError
from cryorefine.geometry.euler import axis_angle_to_matrix

__all__ = ["SymmetryGroup", "point_group"]

_PHI = (1 + math.sqrt(5)) / 2
_X, _Y, _Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)

# (kind, fold, axis): kind "rot" (fold-fold axis), "mirror" (plane normal) or "inv".
_Generator = tuple[str, int, tuple[float, float, float]]
_INV: _Generator = ("inv", 0, _Z)

_ICOSAHEDRAL: dict[str, list[_Generator]] = {
    "I2": [("rot", 2, _Z), ("rot", 5, (1.0, 0.0, _PHI)), ("rot", 3, (0.0, 1.0, _PHI**2))],
    "I1": [("rot", 2, _X), ("rot", 5, (_PHI, 0.0, -1.0)), ("rot", 3, (_PHI**2, 1.0, 0.0))],
    # RELION also lists a 3-fold for I3 and I4, (-+0.4911234778630044, 0.3568220764705179,
    # 0.7946544753759428); the 2-fold and 5-fold generate it, and its decimals (off by
    # ~1e-8) would leave products 1e-7 apart, so it is left out here.
    "I3": [("rot", 2, (-1.0, 0.0, _PHI)), ("rot", 5, _Z)],
    "I4": [("rot", 2, (1.0, 0.0, _PHI)), ("rot", 5, (2.0, 0.0, 1.0))],
}
_ICOSAHEDRAL_MIRROR = {
    "I2": (1.0, 0.0, 0.0),
    "I1": (0.0, 0.0, -1.0),
    "I3": (_PHI, 0.0, 1.0),
    "I4": (_PHI, 0.0, -1.0),
}
_T2 = (0.0, math.sqrt(2 / 3), math.sqrt(1 / 3))  # RELION: 0, 0.816496, 0.577350
_FIXED: dict[str, list[_Generator]] = {
    "CI": [_INV],
    "CS": [("mirror", 0, _Z)],
    "T": [("rot", 3, _Z), ("rot", 2, _T2)],
    "TD": [("rot", 3, _Z), ("rot", 2, _T2), ("mirror", 0, (math.sqrt(2), math.sqrt(6), 0.0))],
    "TH": [("rot", 3, _Z), ("rot", 2, (0.0, -_T2[1], -_T2[2])), _INV],
    "O": [("rot", 3, (1.0, 1.0, 1.0)), ("rot", 4, _Z)],
    "OH": [("rot", 3, (1.0, 1.0, 1.0)), ("rot", 4, _Z), ("mirror", 0, (0.0, 1.0, 1.0))],
    **_ICOSAHEDRAL,
    **{f"{k}H": [*v, ("mirror", 0, _ICOSAHEDRAL_MIRROR[k])] for k, v in _ICOSAHEDRAL.items()},
}
_CANONICAL = {"CI": "Ci", "CS": "Cs", "TD": "Td", "TH": "Th", "OH": "Oh"}
_VALID_FORMS = (
    "C<n>, Ci, Cs, C<n>v, C<n>h, S<n> (n even), D<n>, D<n>v, D<n>h, T, Td, Th, O, Oh, "
    "I (= I2), I1, I2, I3, I4, Ih (= I2h), I1h, I2h, I3h, I4h, with 1 <= n <= 99, any case"
)
_MERGE_TOL = 1e-9  # distinct group elements differ by > 0.1 in some entry; rounding by ~1e-15


@dataclass(frozen=True)
class SymmetryGroup:
    """A point group: its RELION name and its operators on map coordinates.

    Attributes
    ----------
    name
        Canonical spelling, e.g. ``"C6"``, ``"D7"``, ``"Ci"``, ``"C2v"``, ``"Td"``,
        ``"I2"`` (RELION's ``I``), ``"I3h"``.
    family
        ``"C"``, ``"CI"``, ``"CS"``, ``"CV"``, ``"CH"``, ``"S"``, ``"D"``, ``"DV"``,
        ``"DH"``, ``"T"``, ``"TD"``, ``"TH"``, ``"O"``, ``"OH"``, ``"I1"`` .. ``"I4"`` or
        ``"I1H"`` .. ``"I4H"``: which of RELION's groups (and asymmetric-unit rules).
    n
        The ``n`` of the cyclic and dihedral families (and ``S<n>``); 0 otherwise.
    operators
        ``(g, 3, 3)``: the identity first, then every other element.
    """

    name: str
    family: str
    n: int
    operators: Float[Tensor, "g 3 3"]

    @property
    def order(self) -> int:
        """Number of operators ``g``, the identity and improper ones included."""
        return self.operators.shape[0]

    @property
    def proper(self) -> Bool[Tensor, " g"]:
        """Which operators are rotations (determinant +1)."""
        positive: Tensor = torch.linalg.det(self.operators) > 0
        return positive

    @property
    def rotations(self) -> Float[Tensor, "r 3 3"]:
        """The proper operators (a subgroup; identity first): equivalent poses are ``A @ R``."""
        return self.operators[self.proper]


def _generator_matrix(kind: str, fold: int, axis: tuple[float, float, float]) -> Tensor:
    v = torch.tensor(axis, dtype=torch.float64)
    if kind == "rot":
        return axis_angle_to_matrix(v, torch.tensor(360.0 / fold, dtype=torch.float64))
    if kind == "mirror":
        u = v / torch.linalg.vector_norm(v)
        return torch.eye(3, dtype=torch.float64) - 2 * torch.outer(u, u)
    return -torch.eye(3, dtype=torch.float64)


def _unique(candidates: Tensor, known: Tensor) -> Tensor:
    """Candidates not within the merge tolerance of ``known`` or of an earlier candidate."""
    if candidates.shape[0] == 0:
        return candidates
    dist_known = (candidates[:, None] - known[None]).abs().amax(dim=(-1, -2))
    fresh = candidates[~(dist_known < _MERGE_TOL).any(dim=1)]
    dist_self = (fresh[:, None] - fresh[None]).abs().amax(dim=(-1, -2))
    earlier = torch.ones_like(dist_self, dtype=torch.bool).tril(diagonal=-1)
    return fresh[~((dist_self < _MERGE_TOL) & earlier).any(dim=1)]


def _close(generators: Tensor) -> Tensor:
    """Group generated by ``generators``: right products until no new element appears."""
    elements = torch.eye(3, dtype=torch.float64)[None]
    newest = elements
    while newest.shape[0] > 0:
        products = (newest[:, None] @ generators[None]).reshape(-1, 3, 3)
        newest = _unique(products, elements)
        elements = torch.cat([elements, newest])
    return elements


def _parse(text: str, option: str) -> tuple[str, str, int]:
    """(canonical name, family, n) of a RELION point-group name, or InputError."""
    key = text.strip().upper()
    if key in ("I5", "I5H"):
        raise InputError(
            f"{option} {text}: the icosahedral setting {key} is not implemented in RELION "
            "either; use I1, I2 (= I), I3 or I4 (with H for the mirror)"
        )
    if key == "I":
        key = "I2"
    elif key == "IH":
        key = "I2H"
    if key in _FIXED:
        return _CANONICAL.get(key, key[:2] + key[2:].lower()), key, 0
    match = re.fullmatch(r"([CDS])(\d{1,2})([VH]?)", key)
    if match is None or int(match[2]) < 1 or (match[1] == "S" and match[3]):
        raise InputError(
            f"{option}: {text!r} is not a point group RELION knows; expected one of {_VALID_FORMS}"
        )
    letter, n, suffix = match[1], int(match[2]), match[3]
    if letter == "S" and n % 2:
        raise InputError(
            f"{option} {text}: S<n> needs an even n (RELION builds it from an n/2-fold "
            "axis and the inversion)"
        )
    return f"{letter}{n}{suffix.lower()}", letter + suffix, n


def _generators(family: str, n: int) -> list[_Generator]:
    if family in _FIXED:
        return _FIXED[family]
    if family == "S":  # RELION: n/2-fold axis along z and the inversion
        return [("rot", n // 2, _Z), _INV]
    gens: list[_Generator] = [("rot", n, _Z)]
    if family.startswith("D"):
        gens.append(("rot", 2, _X))
    if family in ("CV",):
        gens.append(("mirror", 0, _Y))
    elif family == "DV":
        gens.append(("mirror", 0, _X))
    elif family in ("CH", "DH"):
        gens.append(("mirror", 0, _Z))
    return gens


def point_group(
    name: str,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float64,
    option: str = "--sym",
) -> SymmetryGroup:
    """The point group RELION means by ``name`` (any case), e.g. ``"C6"``, ``"d7"``, ``"I"``.

    Generators as RELION's ``symmetries.cpp`` (REFINE_SPEC.md §6.1): ``C<n>``
    an n-fold axis along z; ``Ci`` the inversion; ``Cs`` the mirror z = 0;
    ``C<n>v`` adds the mirror y = 0, ``C<n>h`` the mirror z = 0; ``S<n>`` (n
    even) an n/2-fold z axis and the inversion (RELION's construction: for
    n/2 even this is ``C<n/2>h``, not the crystallographic ``S<n>``); ``D<n>``
    adds a 2-fold along x, ``D<n>v`` the mirror x = 0, ``D<n>h`` the mirror
    z = 0; ``T`` a 3-fold along z and a 2-fold along ``(0, sqrt(2/3), sqrt(1/3))``;
    ``O`` 3-fold ``(1, 1, 1)`` and 4-fold z; ``I``/``I1``..``I4`` RELION's four
    icosahedral settings; ``H``/``h`` suffixes and ``Td``, ``Th``, ``Oh`` add a
    mirror or the inversion. ``I5`` is not implemented (nor in RELION).

    Parameters
    ----------
    name
        The ``--sym`` value (or ``rlnSymmetryGroup``).
    device, dtype
        Where the operators are made (built in float64, then converted).
    option
        How error messages name the source of ``name``.

    Raises
    ------
    InputError
        ``name`` is not one of RELION's point groups.
    """
    canonical, family, n = _parse(name, option)
    gens = torch.stack([_generator_matrix(*g) for g in _generators(family, n)])
    operators = _close(gens).to(device=device, dtype=dtype)
    return SymmetryGroup(name=canonical, family=family, n=n, operators=operators)
