"""Fuzzing the STAR and MRC readers: any input gives a result or an ``InputError``, never a crash.

Four kinds of input, drawn by hypothesis: text built line by line from STAR's
grammar (blocks, loops, labels, rows of numbers, names, quotes, comments and
junk), a valid particles file with random edits (lines dropped, doubled,
swapped, tokens replaced, the file cut short), arbitrary bytes, and a valid MRC
file with random header words, flipped bytes and a random length. Each input is
read by every public reader that takes it (``read_star``, ``load_particles``
with and without image checks; ``read_mrc_header``, ``read_mrc`` with and
without memory mapping, ``read_image``) and the outcome is sorted:
``"result"`` or ``"input_error"``; any other exception fails the test, and a
watchdog fails a read that takes more than ``HANG_SECONDS`` (a hang).

CI runs ``FUZZ_EXAMPLES`` examples per property (seconds in all);
``bench/fuzz_bench.py`` reuses the strategies and targets below for a longer run
with counts per outcome.
"""

import functools
import os
import signal
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryorefine.errors import InputError
from cryorefine.io import (
    NUMERIC_LABELS,
    TEXT_LABELS,
    load_particles,
    read_image,
    read_mrc,
    read_mrc_header,
    read_star,
)

#: Examples per property in CI; bench/fuzz_bench.py raises it through the environment.
FUZZ_EXAMPLES = int(os.environ.get("CRYOREFINE_FUZZ_EXAMPLES", "60"))

#: A read of a file of a few kilobytes that takes longer than this is a hang, not slowness:
#: the largest input here is ~4 KB, which every reader handles in milliseconds.
HANG_SECONDS = 20.0

_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # wall-clock deadlines flake on a shared CI machine; the watchdog is the bound
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- the targets: one input, every reader, one outcome -------------------------------------


class Hang(Exception):
    """A reader did not return within ``HANG_SECONDS``."""


@contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Raise ``Hang`` in the main thread if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(read: Callable[[], object]) -> str:
    """``"result"`` or ``"input_error"``; any other exception (or a hang) propagates."""
    try:
        with watchdog():
            read()
    except InputError as error:
        message = str(error)
        assert message.strip(), "an InputError must say what is wrong"
        return "input_error"
    return "result"


def star_outcomes(path: Path) -> tuple[str, ...]:
    """Outcomes of ``read_star``, ``load_particles`` without and with the image checks."""
    return (
        outcome(lambda: read_star(path)),
        outcome(lambda: load_particles(path, check_images=False)),
        outcome(lambda: load_particles(path)),
    )


def mrc_outcomes(path: Path, index: int) -> tuple[str, ...]:
    """Outcomes of every MRC reader on ``path`` (``index``: the image ``read_image`` asks for)."""
    return (
        outcome(lambda: read_mrc_header(path)),
        outcome(lambda: read_mrc(path)),
        outcome(lambda: read_mrc(path, mmap=True)),
        outcome(lambda: read_image(path, index)),
    )


# --- STAR inputs -------------------------------------------------------------------------

_LABELS = sorted(NUMERIC_LABELS)[:40] + sorted(TEXT_LABELS)[:20] + ["rlnMyOwnLabel", "rln"]
_NUMBER = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "1e999", "0x10", "1,5", "+", "-", ".", "1.2.3", "١٢"]),
)
_WORD = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12
)
_TOKEN = st.one_of(
    _NUMBER,
    _WORD,
    st.sampled_from(
        [
            "000001@Extract/particles.mrcs",
            "000009@Extract/particles.mrcs",
            "0@Extract/particles.mrcs",
            "Extract/particles.mrcs",
            "x@",
            "@",
            "[0,1,1]",
            "[0,2]",
            '"a b"',
            "'x'",
            '"unbalanced',
            "'",
            "#",
            "data_",
            "loop_",
            "_rlnAngleRot",
        ]
    ),
)
_BLOCK = st.sampled_from(["", "optics", "particles", "general", "particles", "x y", "data_"])
_LINE = st.one_of(
    _BLOCK.map(lambda name: f"data_{name}"),
    st.just("loop_"),
    st.sampled_from(_LABELS).map(lambda label: f"_{label}"),
    st.tuples(st.sampled_from(_LABELS), st.integers(0, 99)).map(lambda t: f"_{t[0]} #{t[1]}"),
    st.tuples(st.sampled_from(_LABELS), _TOKEN).map(lambda t: f"_{t[0]} {t[1]}"),
    st.lists(_TOKEN, min_size=1, max_size=12).map("\t".join),
    _WORD.map(lambda text: f"# {text}"),
    _WORD,
    st.just(""),
)
_GRAMMAR_STAR = st.lists(_LINE, max_size=40).map("\n".join)

VALID_STAR = """# a valid particles file (mutated below)

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 300.0 2.7 0.1 1.5 8 2

data_particles

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnAngleRot #5
_rlnAngleTilt #6
_rlnAnglePsi #7
_rlnOriginXAngst #8
_rlnOriginYAngst #9
_rlnRandomSubset #10
_rlnOpticsGroup #11
000001@Extract/particles.mrcs 15000.0 15100.0 10.0 30.0 90.0 -10.0 1.5 -1.5 1 1
000002@Extract/particles.mrcs 16000.0 16100.0 20.0 40.0 80.0 -20.0 0.0 3.0 2 1
000003@Extract/particles.mrcs 17000.0 17100.0 30.0 50.0 70.0 -30.0 -3.0 0.0 1 1
"""


def _edit(text: str, edits: list[tuple[str, int, int, str]]) -> str:
    """Apply ``(kind, i, j, token)`` edits to the lines of ``text`` (indices taken modulo)."""
    lines = text.splitlines()
    for kind, i, j, token in edits:
        if not lines:
            break
        a, b = i % len(lines), j % len(lines)
        if kind == "drop":
            del lines[a]
        elif kind == "double":
            lines.insert(a, lines[a])
        elif kind == "swap":
            lines[a], lines[b] = lines[b], lines[a]
        elif kind == "replace":
            words = lines[a].split() or [""]
            words[b % len(words)] = token
            lines[a] = " ".join(words)
        elif kind == "insert":
            lines.insert(a, token)
        elif kind == "cut":
            return "\n".join(lines)[: i % (len(text) + 1)]
    return "\n".join(lines) + "\n"


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["drop", "double", "swap", "replace", "replace", "insert", "cut"]),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
        _TOKEN,
    ),
    min_size=1,
    max_size=6,
)
_MUTATED_STAR = _EDITS.map(lambda edits: _edit(VALID_STAR, edits))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with Extract/particles.mrcs (3 images, 8 x 8, 1.5 A) for the files to name."""
    folder = tmp_path_factory.mktemp("fuzz_star")
    (folder / "Extract").mkdir()
    with mrcfile.new(folder / "Extract" / "particles.mrcs") as mrc:
        mrc.set_data(np.zeros((3, 8, 8), dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = 1.5
    return folder


def write_star_input(project: Path, content: str | bytes) -> Path:
    """The fuzzed content as ``project/particles.star`` (bytes as they are, text as UTF-8)."""
    path = project / "particles.star"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


def test_the_unmutated_star_file_loads(project: Path) -> None:
    # the mutations below start from a file that is valid, images included
    assert star_outcomes(write_star_input(project, VALID_STAR)) == ("result",) * 3


def test_a_file_rewritten_after_a_failed_read_is_read_as_it_is_now(project: Path) -> None:
    # found by bench/fuzz_bench.py: starfile reads through linecache and leaves the lines of
    # a file it failed on cached, so the next read of that path parsed the old text
    path = write_star_input(project, "data_particles\nx\nloop_\n# c\n_rlnAngleRot\n")
    assert outcome(lambda: read_star(path)) == "input_error"
    write_star_input(project, "data_particles\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n10 20\n")
    table = read_star(path)["particles"]
    assert list(table.columns) == ["rlnAngleRot", "rlnAngleTilt"]
    assert table.to_numpy().tolist() == [[10, 20]]


@_SETTINGS
@given(text=_GRAMMAR_STAR)
def test_star_text_from_the_grammar_reads_or_raises_input_error(project: Path, text: str) -> None:
    for result in star_outcomes(write_star_input(project, text)):
        assert result in ("result", "input_error")


@_SETTINGS
@given(text=_MUTATED_STAR)
def test_edited_particles_file_reads_or_raises_input_error(project: Path, text: str) -> None:
    for result in star_outcomes(write_star_input(project, text)):
        assert result in ("result", "input_error")


@_SETTINGS
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_as_star_read_or_raise_input_error(project: Path, data: bytes) -> None:
    for result in star_outcomes(write_star_input(project, data)):
        assert result in ("result", "input_error")


# --- MRC inputs --------------------------------------------------------------------------

#: Header words (4 bytes each) that describe the data: nx ny nz mode, nxstart..., mx my mz,
#: cell, angles, mapc mapr maps, amin amax amean, ispg, nsymbt; then map (52), machst (53).
_HEADER_WORDS = [*range(24), 52, 53]


@functools.cache
def valid_mrc_bytes() -> bytes:
    """A valid 3-image stack (8 x 8, float32, 1.5 A) as mrcfile writes it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "valid.mrcs"
        with mrcfile.new(path) as mrc:
            mrc.set_data(np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8))
            mrc.set_image_stack()
            mrc.voxel_size = 1.5
        return path.read_bytes()


_WORD_VALUE = st.one_of(
    st.integers(-(2**31), 2**31 - 1).map(lambda v: struct.pack("<i", v)),
    st.floats(width=32, allow_nan=True, allow_infinity=True).map(lambda v: struct.pack("<f", v)),
    st.sampled_from([0, 1, 2, 3, 4, 6, 12, 101, -1, 8, 64, 1024, 2**20]).map(
        lambda v: struct.pack("<i", v)
    ),
    st.binary(min_size=4, max_size=4),
)
_MRC_EDITS = st.tuples(
    st.lists(st.tuples(st.sampled_from(_HEADER_WORDS), _WORD_VALUE), max_size=4),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, 4096)),
)


def edit_mrc(content: bytes, edits: tuple) -> bytes:
    """Set header words, flip bytes and cut the file as ``edits`` says."""
    words, flips, length = edits
    data = bytearray(content)
    for word, value in words:
        data[4 * word : 4 * word + 4] = value
    for position, value in flips:
        data[position % len(data)] = value
    return bytes(data if length is None else data[:length])


@pytest.fixture(scope="module")
def mrc_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_mrc")


def test_the_unedited_mrc_file_reads(mrc_folder: Path) -> None:
    path = mrc_folder / "valid.mrcs"
    path.write_bytes(valid_mrc_bytes())
    assert mrc_outcomes(path, 2) == ("result",) * 4
    np.testing.assert_array_equal(read_image(path, 2), np.arange(64, 128).reshape(8, 8))


@_SETTINGS
@given(edits=_MRC_EDITS, index=st.integers(1, 4))
def test_edited_mrc_header_reads_or_raises_input_error(
    mrc_folder: Path, edits: tuple, index: int
) -> None:
    path = mrc_folder / "edited.mrcs"
    path.write_bytes(edit_mrc(valid_mrc_bytes(), edits))
    for result in mrc_outcomes(path, index):
        assert result in ("result", "input_error")


@_SETTINGS
@given(data=st.binary(max_size=4096), index=st.integers(1, 4))
def test_arbitrary_bytes_as_mrc_read_or_raise_input_error(
    mrc_folder: Path, data: bytes, index: int
) -> None:
    path = mrc_folder / "bytes.mrc"
    path.write_bytes(data)
    for result in mrc_outcomes(path, index):
        assert result in ("result", "input_error")
