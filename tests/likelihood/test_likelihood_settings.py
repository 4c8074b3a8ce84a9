"""likelihood.settings: tuning constants from the environment, refused by name out of range."""

import pytest

from cryorefine.likelihood.settings import tuning_setting


@pytest.mark.parametrize("text", ["abc", "0.5", "100"])
def test_a_tuning_setting_outside_its_range_is_refused_by_name(text, monkeypatch):
    monkeypatch.setenv("CRYOREFINE_FINE_PADDING", text)
    with pytest.raises(ValueError, match=r"CRYOREFINE_FINE_PADDING=.*\[1.0, 64.0\]"):
        tuning_setting("CRYOREFINE_FINE_PADDING", 2.0, 1.0, 64.0)
    monkeypatch.setenv("CRYOREFINE_FINE_PADDING", "4")
    assert tuning_setting("CRYOREFINE_FINE_PADDING", 2.0, 1.0, 64.0) == 4.0
