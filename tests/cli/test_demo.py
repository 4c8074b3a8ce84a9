"""`cryorefine demo`, the README's first command, runs end to end and reports against the truth."""

from pathlib import Path

from cryorefine.cli.main import main


def test_demo_simulates_refines_and_postprocesses(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO", logger="cryorefine")
    assert main(["demo", "--o", str(tmp_path / "demo")]) == 0
    for name in (
        "Simulate/truth.mrc",
        "Refine3D/run_class001.mrc",
        "Refine3D/run_data.star",
        "PostProcess/postprocess.star",
        "PostProcess/postprocess_masked.mrc",
    ):
        assert (tmp_path / "demo" / name).is_file(), name
    assert "resolution against the truth" in caplog.text
