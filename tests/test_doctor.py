"""`course doctor`: every line is reported, problems are explained, only required breakage fails."""
import contextlib
import importlib
import io
import types
from importlib import metadata

import pytest
import torch

from course_utils.instructor import doctor


@pytest.fixture(scope="module")
def report():
    """One full run of `course doctor` (imports are slow; the tests share it)."""
    rows, out = doctor.collect(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(doctor, "collect", lambda: rows)
        code = doctor.main(None)
    return code, out.getvalue(), rows


def test_report_lists_everything_and_exits_zero_when_required_work(report):
    code, out, _ = report
    assert code == 0
    for item in [*doctor.PACKAGES, "python", "profile", "CUDA", "bitsandbytes 4-bit", "bertviz offline",
                 "course models", "model hub"]:
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


def test_offline_is_reported_as_normal(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no route to host")
    monkeypatch.setattr(doctor.socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    value, ok = doctor._hub()
    assert ok and value == "HF_HUB_OFFLINE=1; " + doctor.OFFLINE


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
    """The shipped models pass; a folder without them is reported with the command that fixes it."""
    assert doctor._course_models()[1], doctor._course_models()[0]
    monkeypatch.setenv("COURSE_MODELS_DIR", str(tmp_path))
    value, ok = doctor._course_models()
    assert not ok and "tiny-bert: missing" in value and "course models check" in value
