"""Bad inputs: one clear InputError naming the file and the row or label, for each mistake.

Each case takes a valid synthetic data set (conftest.py), breaks one thing, runs a
loader, and checks the message for the substrings that matter: the file, the
block, the row (1-based) or label, and what was found. ``{star}`` stands for the
particles file's name.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from conftest import BOX, Dataset, write_volume

from cryorefine.errors import InputError
from cryorefine.io import (
    check_particles_against_tomograms,
    load_optimisation_set,
    load_particles,
    load_tomograms,
    read_mrc,
    read_star,
    write_particles,
)


@dataclass(frozen=True)
class Case:
    flavour: str
    break_it: Callable[[Dataset], None]
    expect: list[str]
    run: Callable[[Dataset], object] = lambda d: load_particles(d.star)


def _set(dataset: Dataset, label: str, row: int, value: object) -> None:
    """Cell (1-based ``row``) of data_particles set to ``value``, then the file rewritten."""
    table = dataset.blocks["particles"]
    column = table[label].astype(object).tolist()
    column[row - 1] = value
    table[label] = column
    dataset.rewrite()


def _drop(label: str) -> Callable[[Dataset], None]:
    def drop(dataset: Dataset) -> None:
        dataset.blocks["particles"] = dataset.blocks["particles"].drop(columns=[label])
        dataset.rewrite()

    return drop


def _drop_optics(label: str) -> Callable[[Dataset], None]:
    def drop(dataset: Dataset) -> None:
        dataset.blocks["optics"] = dataset.blocks["optics"].drop(columns=[label])
        dataset.rewrite()

    return drop


def _two_optics_groups(dataset: Dataset) -> None:
    optics = pd.concat([dataset.blocks["optics"]] * 2, ignore_index=True)
    optics["rlnOpticsGroup"] = [1, 2]
    optics["rlnImageSize"] = [BOX, BOX + 2]
    dataset.blocks["optics"] = optics
    _set(dataset, "rlnOpticsGroup", 3, 2)


def _duplicate_optics_group(dataset: Dataset) -> None:
    dataset.blocks["optics"] = pd.concat([dataset.blocks["optics"]] * 2, ignore_index=True)
    dataset.rewrite()


def _resize_image(
    index: int, shape: tuple[int, ...], voxel: float = 1.5
) -> Callable[[Dataset], None]:
    def resize(dataset: Dataset) -> None:
        data = np.zeros(shape, dtype=np.float32)
        write_volume(
            dataset.images[index], data, voxel, stack=dataset.images[index].suffix == ".mrcs"
        )

    return resize


def _truncate(index: int) -> Callable[[Dataset], None]:
    def truncate(dataset: Dataset) -> None:
        path = dataset.images[index]
        path.write_bytes(path.read_bytes()[:1500])

    return truncate


def _delete(index: int) -> Callable[[Dataset], None]:
    return lambda dataset: dataset.images[index].unlink()


def _empty_particles(dataset: Dataset) -> None:
    dataset.blocks["particles"] = dataset.blocks["particles"].iloc[0:0]
    dataset.rewrite()


def _no_optics(dataset: Dataset) -> None:
    del dataset.blocks["optics"]
    dataset.rewrite()


def _tomograms(dataset: Dataset) -> Path:
    return dataset.project / "Tomograms" / "job006" / "tomograms.star"


def _against_tomograms(dataset: Dataset) -> None:
    check_particles_against_tomograms(
        load_particles(dataset.star), load_tomograms(_tomograms(dataset))
    )


def _tilt_series(dataset: Dataset) -> Path:
    return dataset.project / "Tomograms" / "job006" / "tilt_series" / "TS_01.star"


def _no_geometry(dataset: Dataset) -> None:
    path = _tilt_series(dataset)
    table = read_star(path)["TS_01"]
    assert isinstance(table, pd.DataFrame)
    starfile.write({"TS_01": table.drop(columns=["rlnTomoZRot"])}, path, overwrite=True)


def _write_optimisation_set(dataset: Dataset) -> None:
    (dataset.project / "optimisation_set.star").write_text(
        "data_\n\n_rlnTomoParticlesFile Extract/job071/particles.star\n"
        "_rlnTomoTomogramsFile Tomograms/job099/tomograms.star\n"
    )


def _set_optics(label: str, value: object) -> Callable[[Dataset], None]:
    def edit(dataset: Dataset) -> None:
        dataset.blocks["optics"][label] = [value]
        dataset.rewrite()

    return edit


def _header_word(index: int, word: int, value: int) -> Callable[[Dataset], None]:
    """Set 4-byte header word ``word`` (0: nx, 3: mode) of image file ``index`` to ``value``."""

    def edit(dataset: Dataset) -> None:
        path = dataset.images[index]
        content = bytearray(path.read_bytes())
        content[4 * word : 4 * word + 4] = int(value).to_bytes(4, "little", signed=True)
        path.write_bytes(bytes(content))

    return edit


def _indexed_volumes(dataset: Dataset) -> None:
    names = dataset.blocks["particles"]["rlnImageName"].tolist()
    dataset.blocks["particles"]["rlnImageName"] = [f"000001@{name}" for name in names]
    dataset.rewrite()


CASES = {
    "missing file": Case("spa", lambda d: d.star.unlink(), ["{star}", "does not exist"]),
    "folder instead of a file": Case(
        "spa",
        lambda d: None,
        ["job001", "cannot be read"],
        run=lambda d: load_particles(d.star.parent),
    ),
    "not a STAR file": Case(
        "spa", lambda d: d.star.write_text("hello\nworld\n"), ["{star}", "not a STAR file"]
    ),
    "binary file": Case(
        "spa",
        lambda d: d.star.write_bytes(b"\x89PNG\xff\xfe"),
        ["{star}", "not a text (STAR) file"],
    ),
    "label without a value in a list block": Case(
        "relion5_stack2d",
        lambda d: d.replace_text(
            "_rlnTomoSubTomosAre2DStacks\t\t\t1", "_rlnTomoSubTomosAre2DStacks"
        ),
        ["{star}", "data_general", "rlnTomoSubTomosAre2DStacks needs exactly one value"],
    ),
    "overwriting the input": Case(
        "spa",
        lambda d: None,
        ["{star}", "refusing to overwrite"],
        run=lambda d: write_particles(load_particles(d.star), d.star),
    ),
    "missing required label (image)": Case(
        "spa", _drop("rlnImageName"), ["{star}", "data_particles", "rlnImageName", "missing"]
    ),
    "missing required label (CTF of pseudo-subtomograms)": Case(
        "relion4", _drop("rlnCtfImage"), ["{star}", "data_particles", "rlnCtfImage", "missing"]
    ),
    "missing required label (visible frames)": Case(
        "relion5_stack2d",
        _drop("rlnTomoVisibleFrames"),
        ["{star}", "rlnTomoVisibleFrames", "missing"],
    ),
    "missing required label (optics pixel size)": Case(
        "spa",
        _drop_optics("rlnImagePixelSize"),
        ["{star}", "data_optics", "rlnImagePixelSize", "missing"],
    ),
    "non-numeric value": Case(
        "spa",
        lambda d: _set(d, "rlnAngleTilt", 3, "abc"),
        ["{star}", "data_particles", "row 3", "rlnAngleTilt", "'abc'", "expected a number"],
    ),
    "non-numeric value in a list block": Case(
        "relion5_stack2d",
        lambda d: d.replace_text(
            "_rlnTomoSubTomosAre2DStacks\t\t\t1", "_rlnTomoSubTomosAre2DStacks yes"
        ),
        ["{star}", "data_general", "rlnTomoSubTomosAre2DStacks", "'yes'", "expected a number"],
    ),
    "not a finite number": Case(
        "subtomo3d",
        lambda d: _set(d, "rlnAngleRot", 2, "nan"),
        ["{star}", "data_particles", "row 2", "rlnAngleRot", "finite"],
    ),
    "half set other than 1 or 2": Case(
        "spa",
        lambda d: _set(d, "rlnRandomSubset", 2, 3),
        ["{star}", "row 2", "rlnRandomSubset is 3", "1 or 2"],
    ),
    "optics group that does not exist": Case(
        "spa",
        lambda d: _set(d, "rlnOpticsGroup", 2, 7),
        ["{star}", "data_particles", "row 2", "rlnOpticsGroup 7", "not defined in data_optics"],
    ),
    "optics group defined twice": Case(
        "spa",
        _duplicate_optics_group,
        ["{star}", "data_optics", "row 2", "rlnOpticsGroup 1", "twice"],
    ),
    "images of different sizes (optics table)": Case(
        "spa",
        _two_optics_groups,
        ["{star}", "data_optics", "rows 1, 2", "rlnImageSize differs", "8, 10"],
    ),
    "images of different sizes (MRC header of a volume)": Case(
        "subtomo3d",
        _resize_image(2, (10, 10, 10)),
        ["{star}", "row 3", "p2.mrc", "10x10x10", "8x8x8"],
    ),
    "images of different sizes (MRC header of a stack)": Case(
        "spa",
        _resize_image(0, (4, 10, 10)),
        ["{star}", "row 1", "particles.mrcs", "10x10x4", "8x8x4"],
    ),
    "stack shorter than its visible tilts": Case(
        "relion5_stack2d",
        lambda d: _set(d, "rlnTomoVisibleFrames", 1, "[1,1,1,1,1]"),
        ["{star}", "row 1", "8x8x3", "8x8x5", "rlnTomoVisibleFrames"],
    ),
    "malformed visible frames": Case(
        "relion5_stack2d",
        lambda d: _set(d, "rlnTomoVisibleFrames", 2, "[0,2,1]"),
        ["{star}", "row 2", "rlnTomoVisibleFrames", "'[0,2,1]'"],
    ),
    "pixel size disagrees with the MRC header": Case(
        "spa",
        _resize_image(0, (4, BOX, BOX), voxel=2.0),
        ["{star}", "row 1", "particles.mrcs", "voxel size 2 A", "rlnImagePixelSize is 1.5 A"],
    ),
    "truncated MRC": Case("subtomo3d", _truncate(1), ["{star}", "row 2", "p1.mrc", "truncated"]),
    "truncated MRC read directly": Case(
        "subtomo3d",
        _truncate(1),
        ["p1.mrc", "truncated", "8x8x8 voxels", "3072 bytes", "has 1500 bytes"],
        run=lambda d: read_mrc(d.images[1]),
    ),
    "not an MRC file": Case(
        "subtomo3d",
        lambda d: d.images[3].write_bytes(b"\0" * 2000),
        ["{star}", "row 4", "p3.mrc", "not a readable MRC file"],
    ),
    "duplicated label in a loop": Case(
        "spa",
        lambda d: d.replace_text("_rlnAnglePsi #", "_rlnAngleRot #"),
        ["{star}", "data_particles", "label rlnAngleRot appears twice", "lines"],
    ),
    "duplicated label in a list block": Case(
        "relion5_stack2d",
        lambda d: d.replace_text(
            "_rlnTomoSubTomosAre2DStacks",
            "_rlnTomoSubTomosAre2DStacks 1\n_rlnTomoSubTomosAre2DStacks",
        ),
        ["{star}", "data_general", "rlnTomoSubTomosAre2DStacks appears twice"],
    ),
    "duplicated block": Case(
        "spa",
        lambda d: d.replace_text("data_particles", "data_optics"),
        ["{star}", "data_optics appears twice"],
    ),
    "row with a value missing": Case(
        "spa",
        lambda d: d.replace_text("\ta\n", "\n"),
        ["{star}", "data_particles row 1", "values, expected"],
    ),
    "empty particles table": Case(
        "spa", _empty_particles, ["{star}", "data_particles has no rows"]
    ),
    "RELION 3.0 file without optics": Case(
        "spa", _no_optics, ["{star}", "no data_optics", "RELION 3.0"]
    ),
    "missing image file": Case(
        "subtomo3d", _delete(1), ["{star}", "row 2", "rlnImageName", "p1.mrc", "does not exist"]
    ),
    "missing image stack": Case(
        "spa", _delete(0), ["{star}", "rows 1, 2, 3, 4", "particles.mrcs", "does not exist"]
    ),
    "image index beyond the stack": Case(
        "spa",
        lambda d: _set(d, "rlnImageName", 4, "000009@Extract/job001/particles.mrcs"),
        ["{star}", "row 4", "image 9", "holds 4"],
    ),
    "malformed image name": Case(
        "spa",
        lambda d: _set(d, "rlnImageName", 1, "first@Extract/job001/particles.mrcs"),
        ["{star}", "row 1", "rlnImageName", "INDEX@FILE"],
    ),
    "particle in an unknown tomogram": Case(
        "relion5_stack2d",
        lambda d: _set(d, "rlnTomoName", 3, "TS_02"),
        ["{star}", "row 3", "rlnTomoName 'TS_02'", "tomograms.star"],
        run=_against_tomograms,
    ),
    "visible frames not one per tilt": Case(
        "relion5_stack2d",
        lambda d: _set(d, "rlnTomoVisibleFrames", 2, "[1,1,1,0]"),
        ["{star}", "row 2", "rlnTomoVisibleFrames has 4 entries", "5 tilt images"],
        run=_against_tomograms,
    ),
    "missing tilt series file": Case(
        "relion5_stack2d",
        lambda d: _tilt_series(d).unlink(),
        [
            "tomograms.star",
            "data_global row 1 (TS_01)",
            "rlnTomoTiltSeriesStarFile",
            "does not exist",
        ],
        run=lambda d: load_tomograms(_tomograms(d)),
    ),
    "tilt table without geometry": Case(
        "relion5_stack2d",
        _no_geometry,
        ["TS_01.star", "data_TS_01", "no tilt geometry", "rlnTomoZRot"],
        run=lambda d: load_tomograms(_tomograms(d)),
    ),
    "optimisation set naming a missing file": Case(
        "relion5_stack2d",
        _write_optimisation_set,
        [
            "optimisation_set.star",
            "rlnTomoTomogramsFile",
            "'Tomograms/job099/tomograms.star'",
            "does not exist",
        ],
        run=lambda d: load_optimisation_set(d.project / "optimisation_set.star"),
    ),
    # added by the reliability issue: misspelt labels, CTF and header values, dimensionality
    "misspelt required label": Case(
        "spa",
        lambda d: d.replace_text("_rlnImageName #", "_rlnImageNmae #"),
        ["{star}", "data_particles", "rlnImageName is missing", "found rlnImageNmae: misspelt?"],
    ),
    "misspelt required optics label": Case(
        "spa",
        lambda d: d.replace_text("_rlnImageSize #", "_rlnImagSize #"),
        ["{star}", "data_optics", "rlnImageSize is missing", "found rlnImagSize"],
    ),
    "not a finite defocus": Case(
        "spa",
        lambda d: _set(d, "rlnDefocusV", 3, "inf"),
        ["{star}", "data_particles", "row 3", "rlnDefocusV is inf", "finite"],
    ),
    "voltage of zero": Case(
        "spa",
        _set_optics("rlnVoltage", 0.0),
        ["{star}", "data_optics row 1", "rlnVoltage is 0", "expected a positive number (kV)"],
    ),
    "amplitude contrast above 1": Case(
        "spa",
        _set_optics("rlnAmplitudeContrast", 1.5),
        ["{star}", "data_optics row 1", "rlnAmplitudeContrast is 1.5", "[0, 1)"],
    ),
    "dimensionality that is neither 2 nor 3": Case(
        "spa",
        _set_optics("rlnImageDimensionality", 4),
        ["{star}", "data_optics", "rlnImageDimensionality is [4]", "2 or 3"],
    ),
    "2D image where a volume is expected": Case(
        "subtomo3d",
        _resize_image(1, (BOX, BOX)),
        ["{star}", "row 2", "p1.mrc", "8x8x1 voxels", "8x8x8 was expected"],
    ),
    "stack index into 3D images": Case(
        "subtomo3d",
        _indexed_volumes,
        ["{star}", "rlnImageName names image 1", "images are 3D", "without INDEX@"],
    ),
    "MRC header with an unknown mode": Case(
        "subtomo3d",
        _header_word(2, 3, 5),
        ["{star}", "row 3", "p2.mrc", "not a readable MRC file", "mode"],
    ),
    "MRC header with a zero size": Case(
        "subtomo3d",
        _header_word(0, 0, 0),
        ["{star}", "row 1", "p0.mrc", "nx, ny, nz = 0, 8, 8", "at least 1"],
    ),
    "MRC header with a negative size read directly": Case(
        "subtomo3d",
        _header_word(0, 1, -8),
        ["p0.mrc", "not a readable MRC file", "nx, ny, nz = 8, -8, 8"],
        run=lambda d: read_mrc(d.images[0]),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises_one_line_naming_file_and_row_or_label(make_dataset, name: str) -> None:
    case = CASES[name]
    dataset = make_dataset(case.flavour)
    case.break_it(dataset)
    with pytest.raises(InputError) as caught:
        case.run(dataset)
    message = str(caught.value)
    assert "\n" not in message
    for part in case.expect:
        assert part.format(star=dataset.star.name) in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    "flavour", ["spa", "subtomo3d", "relion4", "relion5_stack2d", "relion5_picks"]
)
def test_unbroken_data_sets_load(make_dataset, flavour: str) -> None:
    # the cases above fail because of what they break, not because the base set is bad
    assert len(load_particles(make_dataset(flavour).star)) == 4
