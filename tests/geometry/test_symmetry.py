import math

import pytest
import torch

from cryorefine.errors import InputError
from cryorefine.geometry import axis_angle_to_matrix, point_group

ORDERS = {
    "C1": 1,
    "C2": 2,
    "C6": 6,
    "C17": 17,
    "Ci": 2,
    "Cs": 2,
    "C2v": 4,
    "C5v": 10,
    "C3h": 6,
    "C4h": 8,
    "S2": 2,
    "S4": 4,
    "S6": 6,
    "D1": 2,
    "D2": 4,
    "D7": 14,
    "D3v": 12,
    "D4v": 16,
    "D3h": 12,
    "D6h": 24,
    "T": 12,
    "Td": 24,
    "Th": 24,
    "O": 24,
    "Oh": 48,
    "I": 60,
    "I1": 60,
    "I2": 60,
    "I3": 60,
    "I4": 60,
    "Ih": 120,
    "I1h": 120,
    "I2h": 120,
    "I3h": 120,
    "I4h": 120,
}
CHIRAL = {"C1", "C2", "C6", "C17", "D1", "D2", "D7", "T", "O", "I", "I1", "I2", "I3", "I4"}

# RELION's symmetries.cpp generators as it prints them: (name, kind, fold, axis, decimals).
RELION_GENERATORS = [
    ("T", "rot", 2, (0.0, 0.816496, 0.577350), 6),
    ("Td", "mirror", 0, (1.4142136, 2.4494897, 0.0), 7),
    ("Th", "rot", 2, (0.0, -0.816496, -0.577350), 6),
    ("O", "rot", 3, (0.5773502, 0.5773502, 0.5773502), 7),
    ("Oh", "mirror", 0, (0.0, 1.0, 1.0), 9),
    ("I2", "rot", 5, (0.525731114, 0.0, 0.850650807), 9),
    ("I2", "rot", 3, (0.0, 0.356822076, 0.934172364), 9),
    ("I1", "rot", 5, (0.85065080702670, 0.0, -0.5257311142635), 13),
    ("I1", "rot", 3, (0.9341723640, 0.3568220765, 0.0), 10),
    ("I3", "rot", 2, (-0.5257311143, 0.0, 0.8506508070), 10),
    ("I3", "rot", 3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428), 16),
    ("I4", "rot", 2, (0.5257311143, 0.0, 0.8506508070), 10),
    ("I4", "rot", 5, (0.8944271932547096, 0.0, 0.4472135909903704), 16),
    ("I3h", "mirror", 0, (0.850650807, 0.0, 0.525731114), 9),
    ("I4h", "mirror", 0, (0.850650807, 0.0, -0.525731114), 9),
    ("I1h", "mirror", 0, (0.0, 0.0, -1.0), 9),
    ("Ih", "mirror", 0, (1.0, 0.0, 0.0), 9),
]


def _contains(operators: torch.Tensor, matrix: torch.Tensor, tol: float) -> bool:
    return bool(((operators - matrix).abs().amax(dim=(-1, -2)) < tol).any())


@pytest.mark.parametrize(("name", "order"), ORDERS.items())
def test_group_order(name, order):
    assert point_group(name, device="cpu").order == order


@pytest.mark.parametrize("name", ORDERS)
def test_products_of_operators_are_operators(name):
    ops = point_group(name, device="cpu").operators
    products = (ops[:, None] @ ops[None]).reshape(-1, 3, 3)
    dist = (products[:, None] - ops[None]).abs().amax(dim=(-1, -2)).amin(dim=1)
    # Elements come from chains of <= ~10 products of exact-axis generators: ~1e-15 each.
    assert dist.max() < 1e-12


@pytest.mark.parametrize("name", ORDERS)
def test_operators_are_orthonormal_with_the_identity_first(name):
    group = point_group(name, device="cpu")
    ops = group.operators
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(ops @ ops.mT, eye.expand_as(ops), rtol=0.0, atol=1e-13)
    det = torch.linalg.det(ops)
    torch.testing.assert_close(det.abs(), torch.ones_like(det))
    assert torch.equal(ops[0], eye)
    proper = int(group.proper.sum())
    assert proper == (group.order if name in CHIRAL else group.order // 2)
    torch.testing.assert_close(
        torch.linalg.det(group.rotations), torch.ones(proper, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("improper", "chiral"),
    [
        ("Oh", "O"),
        ("Td", "T"),
        ("Th", "T"),
        ("D4h", "D4"),
        ("Ih", "I"),
        ("I3h", "I3"),
        ("C6v", "C6"),
        ("C6h", "C6"),
    ],
)
def test_proper_part_of_an_improper_group_is_its_chiral_group(improper, chiral):
    rotations = point_group(improper, device="cpu").rotations
    ops = point_group(chiral, device="cpu").operators
    assert rotations.shape[0] == ops.shape[0]
    assert all(_contains(ops, r, 1e-12) for r in rotations)


def test_cn_is_the_rotations_about_z_by_multiples_of_360_over_n():
    ops = point_group("C6", device="cpu").operators
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    for k in range(6):
        assert _contains(
            ops, axis_angle_to_matrix(z, torch.tensor(60.0 * k, dtype=torch.float64)), 1e-14
        )


def test_dn_adds_a_two_fold_along_x():
    ops = point_group("D5", device="cpu").operators
    x = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert _contains(ops, axis_angle_to_matrix(x, torch.tensor(180.0, dtype=torch.float64)), 1e-14)


@pytest.mark.parametrize(("name", "kind", "fold", "axis", "decimals"), RELION_GENERATORS)
def test_relions_printed_generators_are_elements(name, kind, fold, axis, decimals):
    v = torch.tensor(axis, dtype=torch.float64)
    # Printed components are off by <= half a unit of the last digit, and RELION's
    # icosahedral axes carry ~1e-8 error whatever their length (0.8944271932547096 for
    # 2/sqrt(5) = 0.8944271909999159); generator entries move by <= ~4x the axis error.
    tol = 4 * max(0.5 * 10.0**-decimals, 1e-8)
    if kind == "rot":
        g = axis_angle_to_matrix(v, torch.tensor(360.0 / fold, dtype=torch.float64))
    else:
        u = v / v.norm()
        g = torch.eye(3, dtype=torch.float64) - 2 * torch.outer(u, u)
    assert _contains(point_group(name, device="cpu").operators, g, tol)


def test_names_are_case_insensitive_and_i_is_i2():
    torch.testing.assert_close(
        point_group("c6", device="cpu").operators, point_group("C6", device="cpu").operators
    )
    assert point_group("i", device="cpu").name == "I2"
    assert point_group("d2H", device="cpu").name == "D2h"
    assert point_group("ih", device="cpu").name == "I2h"


def test_operators_are_made_on_the_requested_device_and_dtype(device):
    ops = point_group("O", device=device, dtype=torch.float32).operators
    assert ops.device.type == device.type
    assert ops.dtype == torch.float32


@pytest.mark.parametrize("bad", ["X", "C0", "C100", "D2x", "", "S3v", "I6"])
def test_unknown_name_names_the_option_and_the_valid_forms(bad):
    with pytest.raises(InputError) as info:
        point_group(bad, device="cpu")
    message = str(info.value)
    assert message.startswith("--sym")
    assert repr(bad) in message
    for form in ("C<n>", "D<n>h", "Td", "Oh", "I4h"):
        assert form in message


def test_i5_is_refused_as_in_relion():
    with pytest.raises(InputError, match=r"I5.*not implemented in RELION either"):
        point_group("I5", device="cpu")
    with pytest.raises(InputError, match="not implemented"):
        point_group("i5h", device="cpu", option="rlnSymmetryGroup")


def test_odd_sn_is_refused():
    with pytest.raises(InputError, match=r"S3.*even"):
        point_group("S3", device="cpu")


def test_tetrahedral_two_fold_axis_is_at_the_magic_angle_from_the_three_fold():
    # 2-fold (0, sqrt(2/3), sqrt(1/3)) is arccos(1/sqrt(3)) = 54.7356 deg from the z 3-fold
    ops = point_group("T", device="cpu").operators
    two_folds = ops[(ops.diagonal(dim1=-2, dim2=-1).sum(-1) + 1).abs() < 1e-12]  # trace -1
    assert two_folds.shape[0] == 3
    axes = (two_folds + torch.eye(3, dtype=torch.float64)) / 2  # projector onto the axis
    cos_z = axes[:, 2, 2].sqrt()
    torch.testing.assert_close(cos_z, torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))
