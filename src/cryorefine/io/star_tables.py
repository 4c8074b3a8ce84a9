"""Table edits of particle STAR files, as relion_star_handler does them (no torch here).

Blocks are the ``dict`` that ``io.star.read_star`` returns: block name -> DataFrame
(loop) or dict (list). The particle block is ``particles`` (RELION >= 3.1), the
optics block ``optics``.
"""

import logging
from collections.abc import Sequence

import pandas as pd

from cryorefine.errors import InputError

__all__ = ["combine_particle_tables", "particle_block_name", "select_rows"]

logger = logging.getLogger(__name__)

StarBlocks = dict[str, pd.DataFrame | dict[str, object]]


def particle_block_name(blocks: StarBlocks, source: str) -> str:
    """Name of the particle table: ``particles`` if present, else the only loop block."""
    if "particles" in blocks and isinstance(blocks["particles"], pd.DataFrame):
        return "particles"
    loops = [name for name, block in blocks.items() if isinstance(block, pd.DataFrame)]
    loops = [name for name in loops if name != "optics"]
    if len(loops) != 1:
        raise InputError(
            f"{source}: expected a data_particles table (found blocks: {list(blocks) or 'none'})"
        )
    return loops[0]


def select_rows(
    blocks: StarBlocks, *, label: str, min_value: float, max_value: float, source: str
) -> StarBlocks:
    """Keep the particles whose ``label`` lies in ``[min_value, max_value]`` (inclusive).

    Same as ``relion_star_handler --select LABEL --minval --maxval``; other blocks
    are kept as they are.
    """
    name = particle_block_name(blocks, source)
    table = blocks[name]
    assert isinstance(table, pd.DataFrame)
    if label not in table.columns:
        raise InputError(
            f"{source}: data_{name} has no label {label} (--select); "
            f"labels present: {', '.join(table.columns)}"
        )
    values = pd.to_numeric(table[label], errors="coerce")
    bad = values.isna() & table[label].notna()
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0]) + 1
        raise InputError(
            f"{source}: data_{name} row {row}: {label} is {table[label].iloc[row - 1]!r}, "
            "expected a number for --select"
        )
    keep = (values >= min_value) & (values <= max_value)
    out = dict(blocks)
    out[name] = table.loc[keep.to_numpy()].reset_index(drop=True)
    return out


def _join_optics(
    tables: Sequence[StarBlocks], sources: Sequence[str]
) -> tuple[pd.DataFrame, list[dict[int, int]]]:
    """One optics table: groups with the same name are joined, others renumbered."""
    names: list[str] = []
    rows: list[pd.Series] = []
    renumbering: list[dict[int, int]] = []
    for blocks, source in zip(tables, sources, strict=True):
        optics = blocks.get("optics")
        if not isinstance(optics, pd.DataFrame):
            raise InputError(f"{source}: no data_optics table (RELION >= 3.1 files are needed)")
        for label in ("rlnOpticsGroup", "rlnOpticsGroupName"):
            if label not in optics.columns:
                raise InputError(f"{source}: data_optics has no label {label}")
        mapping: dict[int, int] = {}
        for _, row in optics.iterrows():
            group_name = str(row["rlnOpticsGroupName"])
            if group_name not in names:
                names.append(group_name)
                rows.append(row)
            else:
                logger.warning(
                    "%s: optics group %s joins the group of the same name of an earlier file",
                    source,
                    group_name,
                )
            mapping[int(row["rlnOpticsGroup"])] = names.index(group_name) + 1
        renumbering.append(mapping)
    joined = pd.DataFrame(rows).reset_index(drop=True)
    joined["rlnOpticsGroup"] = range(1, len(joined) + 1)
    return joined, renumbering


def combine_particle_tables(tables: Sequence[StarBlocks], sources: Sequence[str]) -> StarBlocks:
    """Concatenate particle tables (``relion_star_handler --combine``).

    Optics groups of the same ``rlnOpticsGroupName`` are joined and the others
    renumbered; only labels present in every table are kept (a warning names
    each label left out), in the order of the first table.
    """
    if not tables:
        raise InputError("--combine: no STAR files given (list them after --i)")
    optics, renumbering = _join_optics(tables, sources)
    particle_tables: list[pd.DataFrame] = []
    for blocks, source, mapping in zip(tables, sources, renumbering, strict=True):
        table = blocks[particle_block_name(blocks, source)]
        assert isinstance(table, pd.DataFrame)
        table = table.copy()
        unknown = sorted(set(table["rlnOpticsGroup"].astype(int)) - set(mapping))
        if unknown:
            raise InputError(
                f"{source}: data_particles uses rlnOpticsGroup {unknown} "
                f"not defined in data_optics (defined: {sorted(mapping)})"
            )
        table["rlnOpticsGroup"] = table["rlnOpticsGroup"].astype(int).map(mapping)
        particle_tables.append(table)
    common = [
        label
        for label in particle_tables[0].columns
        if all(label in table.columns for table in particle_tables[1:])
    ]
    for table, source in zip(particle_tables, sources, strict=True):
        for label in table.columns:
            if label not in common:
                logger.warning("%s: label %s left out: not in every file combined", source, label)
    particles = pd.concat([table[common] for table in particle_tables], ignore_index=True)
    return {"optics": optics, "particles": particles}
