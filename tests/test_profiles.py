import random

import numpy as np
import pytest
import torch

from course_utils import settings
from course_utils.profiles import detect_profile, setup


def test_course_profile_env_wins(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    monkeypatch.setenv("CI", "true")
    assert detect_profile() == "cpu"


def test_ci_env_selects_ci(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setenv("CI", "true")
    assert detect_profile() == "ci"


def test_no_env_selects_by_hardware(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert detect_profile() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "tpu")
    with pytest.raises(ValueError, match="use one of"):
        detect_profile()


def test_setup_seeds_everything_and_prints_settings(capsys):
    name = settings.notebooks()[0]
    prof = setup(name, seed=3, profile="ci")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    setup(name, seed=3, profile="ci", verbose=False)
    assert first == (random.random(), np.random.rand(), torch.rand(1).item())
    out = capsys.readouterr().out
    assert out.startswith("profile: ci (the smallest sizes") and "yours to change: COURSE_PROFILE" in out
    assert len(out.splitlines()) == 3 and f"this notebook's {len(prof.settings)} sizes: print(profile.settings)" in out
    assert prof.device == torch.device("cpu")


def test_every_notebook_has_all_three_profiles_with_the_same_keys():
    for name in settings.notebooks():
        keys = {p: set(settings.settings_for(name, p)) for p in settings.PROFILES}
        assert keys["ci"] == keys["cpu"] == keys["gpu"], f"{name}: profiles must define the same settings"


def test_settings_files_are_named_after_their_notebook():
    import pkgutil

    files = {m.name for m in pkgutil.iter_modules(settings.__path__)}
    assert files == {name.split("_", 1)[1] for name in settings.notebooks()}, (
        "each settings/<topic>.py must declare NOTEBOOK = 'NN_<topic>'")


def test_settings_are_copies():
    name = settings.notebooks()[0]
    first = settings.settings_for(name, "ci")
    first.clear()
    assert settings.settings_for(name, "ci"), "settings_for must return a copy the caller may change"


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="no settings for notebook"):
        setup("99_nothing", verbose=False)
    with pytest.raises(TypeError, match="seed must be an int"):
        setup(None, seed="1", verbose=False)
    with pytest.raises(ValueError, match="unknown"):
        settings.settings_for(settings.notebooks()[0], "tpu")
    prof = setup(settings.notebooks()[0], profile="ci", verbose=False)
    with pytest.raises(KeyError, match="known"):
        prof["no_such_setting"]


def test_setup_turns_off_transformers_progress_bars():
    import transformers

    transformers.utils.logging.enable_progress_bar()
    setup(settings.notebooks()[0], profile="ci", verbose=False)
    assert not transformers.utils.logging.is_progress_bar_enabled(), "'Loading weights' bars would show in notebooks"


def test_seed_defaults_to_zero_and_is_printed(monkeypatch, capsys):
    monkeypatch.delenv("COURSE_SEED", raising=False)
    prof = setup(settings.notebooks()[0], profile="ci")
    assert prof.seed == 0 and "seed: 0" in capsys.readouterr().out
    assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(0)).item()


def test_course_seed_env_seeds_everything(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_SEED", " 7 ")
    prof = setup(settings.notebooks()[0], profile="ci")
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    assert prof.seed == 7 and "seed: 7" in capsys.readouterr().out
    assert drawn == (random.Random(7).random(), np.random.RandomState(7).rand(),
                     torch.rand(1, generator=torch.Generator().manual_seed(7)).item())


def test_explicit_seed_wins_over_course_seed(monkeypatch):
    monkeypatch.setenv("COURSE_SEED", "7")
    prof = setup(None, seed=2, profile="ci", verbose=False)
    assert prof.seed == 2 and random.random() == random.Random(2).random()


def test_empty_course_seed_means_zero(monkeypatch):
    monkeypatch.setenv("COURSE_SEED", "")
    assert setup(None, profile="ci", verbose=False).seed == 0


@pytest.mark.parametrize("bad", ["one", "1.5", "0x1"])
def test_non_int_course_seed_says_what_to_set(monkeypatch, bad):
    monkeypatch.setenv("COURSE_SEED", bad)
    with pytest.raises(ValueError, match="COURSE_SEED.*set it to a whole number"):
        setup(None, profile="ci", verbose=False)
