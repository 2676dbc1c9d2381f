"""`course doctor`: every line is reported, problems are explained, only required breakage fails."""
import contextlib
import importlib
import io
import types
from importlib import metadata

import pytest
import torch

from course_utils.instructor import doctor
from course_utils.models import RECIPES


@pytest.fixture(scope="module")
def report():
    """One full run of `course doctor` (imports are slow; the tests share it)."""
    rows, out = doctor.collect(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(doctor, "rows", lambda: iter(rows))
        code = doctor.main(None)
    return code, out.getvalue(), rows


def test_report_lists_everything_and_exits_zero_when_required_work(report):
    code, out, _ = report
    assert code == 0
    for item in [*doctor.PACKAGES, "python", "profile", "CUDA", "bitsandbytes 4-bit", "bertviz offline",
                 *(f"model {name}" for name in RECIPES), "model hub"]:
        assert f"  {item} " in out, item


def test_collect_rows_are_item_value_ok(report):
    rows = report[2]
    assert all(isinstance(i, str) and isinstance(v, str) and isinstance(ok, bool) for i, v, ok in rows)
    by_item = {i: (v, ok) for i, v, ok in rows}
    assert by_item["torch"] == (metadata.version("torch"), True)
    assert by_item["profile"][1] and by_item["profile"][0].startswith(("ci ", "cpu ", "gpu "))


def test_missing_package_says_what_to_install(monkeypatch):
    def version(name):
        if name in ("peft", "nbval"):
            raise metadata.PackageNotFoundError(name)
        return "1.0"
    monkeypatch.setattr(doctor, "metadata", types.SimpleNamespace(version=version,
                                                                  PackageNotFoundError=metadata.PackageNotFoundError))
    assert doctor._package("peft") == ("not installed (pip install -e .)", False)
    assert doctor._package("nbval") == ('not installed (pip install -e ".[dev]")', False)
    assert doctor._package("trl") == ("1.0", True)


def test_broken_required_package_fails(monkeypatch, capsys):
    real = importlib.import_module

    def import_module(name, *args):
        if name == "tokenizers":
            raise ImportError("tokenizers is broken")
        return real(name, *args)
    monkeypatch.setattr(doctor, "importlib", types.SimpleNamespace(import_module=import_module))
    monkeypatch.setattr(doctor, "_hub", lambda: ("offline", True))  # no network wait in this test
    assert doctor.main(None) == 1
    out = capsys.readouterr().out
    assert "error: ImportError: tokenizers is broken" in out
    assert "required but broken: tokenizers" in out


def test_offline_mode_opens_no_connection(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE=1 but doctor opened a connection")
    monkeypatch.setattr(doctor.socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    value, ok = doctor._hub()
    assert ok and value == "HF_HUB_OFFLINE=1: not contacted; " + doctor.OFFLINE


def test_unreachable_hub_is_reported_as_normal(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no route to host")
    monkeypatch.setattr(doctor.socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    value, ok = doctor._hub()
    assert ok and value == "HF_HUB_OFFLINE not set; " + doctor.OFFLINE


def test_python_requirement_matches_the_package():
    import tomllib
    from pathlib import Path
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=" + ".".join(map(str, doctor.PYTHON))


def test_old_python_fails(monkeypatch, capsys):
    assert doctor._python((3, 11, 0)) == ("3.11.0", True)
    assert doctor._python((3, 10, 12)) == ("3.10.12: the course needs Python 3.11+ (as its package does)", False)
    monkeypatch.setattr(doctor, "_python", lambda version: ("3.10.12: old", False))
    monkeypatch.setattr(doctor, "_course_models", list)
    monkeypatch.setattr(doctor, "_hub", lambda: ("offline", True))
    assert doctor.main(None) == 1
    out = capsys.readouterr().out
    assert "!!  python " in out and " 3.10.12: old" in out and "required but broken: python" in out


def test_online_is_reported(monkeypatch):
    monkeypatch.setattr(doctor.socket, "create_connection", lambda *a, **k: io.BytesIO())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    value, ok = doctor._hub()
    assert ok and value.startswith("HF_HUB_OFFLINE not set; huggingface.co reachable")


def fake_views(monkeypatch, assets):
    module = types.ModuleType("course_utils.attention_views")
    module.vendored_assets = lambda: assets
    monkeypatch.setitem(__import__("sys").modules, "course_utils.attention_views", module)


def test_bertviz_assets_present(monkeypatch, tmp_path):
    (tmp_path / "require.js").write_text("//")
    fake_views(monkeypatch, {"require.js": tmp_path / "require.js"})
    assert doctor._bertviz() == ("OK: require.js shipped with the package", True)


def test_bertviz_assets_missing_or_module_broken(monkeypatch, tmp_path):
    fake_views(monkeypatch, {"require.js": tmp_path / "require.js"})
    value, ok = doctor._bertviz()
    assert not ok and "require.js" in value and "reinstall" in value
    fake_views(monkeypatch, None)  # vendored_assets() is broken: the row reports it, nothing raises
    item, value, ok = doctor._row("bertviz offline", doctor._bertviz)
    assert not ok and value.startswith("error: AttributeError")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only message")
def test_bitsandbytes_on_cpu_points_to_the_gpu_profile():
    value, ok = doctor._bitsandbytes()
    assert ok and ("needs a CUDA GPU (gpu profile)" in value or value.startswith("not installed"))


def test_course_models_status(monkeypatch, tmp_path):
    """One row per shipped model; a folder without them is reported model by model with the command to run."""
    rows = doctor._course_models()
    assert [item for item, _, _ in rows] == [f"model {name}" for name in RECIPES] and all(ok for *_, ok in rows)
    monkeypatch.setenv("COURSE_MODELS_DIR", str(tmp_path))
    for (item, value, ok), name in zip(doctor._course_models(), RECIPES, strict=True):
        assert not ok and value == f"{name}: missing: run `course models check`"
