"""relion_refine options: field names, defaults, and the command line both ways."""

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from cryorefine.cli.refine import add_arguments
from cryorefine.errors import InputError
from cryorefine.refine.driver import refine_run
from cryorefine.refine.options import (
    COMMAND_LINE_FLAGS,
    RefineOptions,
    options_from_command_line,
)


def test_every_field_has_a_relion_flag_and_the_one_letter_files_keep_relions():
    fields = {field.name for field in dataclasses.fields(RefineOptions)}
    assert set(COMMAND_LINE_FLAGS) == fields
    assert COMMAND_LINE_FLAGS["input_particles"] == "--i"
    assert COMMAND_LINE_FLAGS["optimisation_set"] == "--ios"
    assert COMMAND_LINE_FLAGS["reference"] == "--ref"
    assert COMMAND_LINE_FLAGS["output_root"] == "--o"
    assert COMMAND_LINE_FLAGS["ini_high"] == "--ini_high"


def test_defaults_are_relions():
    options = RefineOptions()
    assert (options.healpix_order, options.auto_local_healpix_order, options.oversampling) == (
        2,
        4,
        1,
    )
    assert (options.offset_range, options.offset_step, options.offset) == (6.0, 2.0, 10.0)
    assert (options.perturb, options.adaptive_fraction, options.tau2_fudge) == (0.5, 0.999, 1.0)
    assert (options.pad, options.incr_size, options.maskedge, options.minres_map) == (2, 10, 5, 5)
    assert (options.min_sigma2_offset, options.auto_iter_max, options.r_min_nn) == (2.0, 999, 10)


def test_command_line_round_trip_keeps_every_value():
    options = RefineOptions(
        input_particles=Path("Extract/job007/particles.star"),
        reference=Path("ref.mrc"),
        output_root=Path("Refine3D/job009/run"),
        ini_high=47.3,
        sym="C6",
        ctf=True,
        zero_mask=True,
        particle_diameter=230.0,
        offset_range=5.0,
        tau2_fudge=1.0 / 3.0,
        auto_ignore_angles=True,
        low_resol_join_halves=40.0,
        random_seed=1710533435,
        gpu="0:1",
        pool=30,
    )
    assert options_from_command_line(options.command_line_text()) == options
    assert options_from_command_line(options.to_command_line()) == options


def test_relions_own_command_line_reads_and_unknown_flags_are_skipped(hiv_tutorial):
    text = (hiv_tutorial / "Refine3D/job012/run_optimiser.star").read_text().splitlines()[1]
    options = options_from_command_line(text[1:])
    assert options.optimisation_set == Path("Extract/job010/optimisation_set.star")
    assert options.reference == Path("Reconstruct/job011/merged.mrc")
    assert options.output_root == Path("Refine3D/job012/run")
    assert (options.ini_high, options.sym, options.particle_diameter) == (60.0, "C6", 500.0)
    assert (options.offset_range, options.offset_step, options.sigma_tilt) == (5.0, 2.0, 10.0)
    assert options.trust_ref_size
    assert options.flatten_solvent
    assert options.norm
    assert options.scale
    assert (options.low_resol_join_halves, options.pool, options.j) == (40.0, 30, 6)
    assert options.gpu == ""  # "--gpu" with no value


def test_no_flag_switches_a_boolean_off_and_negative_tau2_fudge_means_not_given():
    options = options_from_command_line(
        "--norm --no_norm --tau2_fudge -1", base=RefineOptions(scale=True)
    )
    assert options.norm is False
    assert options.scale is True
    assert options.tau2_fudge == 1.0


def test_malformed_value_names_the_option_and_the_source():
    with pytest.raises(
        InputError, match=r"run_it003_optimiser.star: option --healpix_order is 'x'"
    ):
        options_from_command_line("--healpix_order x", source="run_it003_optimiser.star")
    with pytest.raises(InputError, match="option --ini_high needs one value"):
        options_from_command_line("--ini_high --ctf")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("interpolation", "cubic", "interpolation must be 'texture' or 'exact'"),
        ("precision", "bfloat16", "precision must be one of"),
    ],
)
def test_an_unknown_interpolation_or_precision_is_refused_before_anything_runs(
    tmp_path, option, value, message
):
    with pytest.raises(ValueError, match=message):
        refine_run(
            RefineOptions(output_root=tmp_path / "run"),
            device=torch.device("cpu"),
            **{option: value},
        )
    assert not any(tmp_path.iterdir())  # nothing written


def test_refine_run_chooses_its_precision_by_device_unless_told():
    assert inspect.signature(refine_run).parameters["precision"].default == "auto"


def test_the_command_line_defaults_to_precision_auto_and_accepts_each_precision():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).precision == "auto"
    for given in ("auto", "float32", "float64", "tf32"):
        assert parser.parse_args(["--precision", given]).precision == given
