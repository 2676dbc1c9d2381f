"""The grader's sandbox command: what it hides and keeps, and the fallback where bwrap is missing."""
import subprocess
import warnings

import pytest

from course_utils.instructor import grading, sandbox
from course_utils.instructor.runner import PACKAGE_ROOT


def test_without_bwrap_there_is_no_prefix_and_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "bwrap is not installed")
    monkeypatch.setattr(grading, "_warned", False)
    assert sandbox.sandbox_prefix(tmp_path, []) is None
    with pytest.warns(UserWarning, match="grading is NOT sandboxed: bwrap is not installed"):
        grading._warn_unsandboxed()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grading._warn_unsandboxed()  # once is enough


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_sandbox_hides_folders_keeps_the_course_and_writes_only_its_own(tmp_path):
    work, secret = tmp_path / "work", PACKAGE_ROOT / "solutions"
    work.mkdir()
    prefix = sandbox.sandbox_prefix(work, [secret, PACKAGE_ROOT])
    script = (f"import os, course_utils; print(sorted(os.listdir({str(secret)!r})), course_utils.__file__)\n"
              f"open({str(work / 'ok.txt')!r}, 'w').write('ok')\n"
              f"try:\n    open({str(PACKAGE_ROOT / 'owned.txt')!r}, 'w')\nexcept OSError as e:\n    print('refused')")
    done = subprocess.run(prefix + ["python3", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PACKAGE_ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[] ") and "course_utils" in done.stdout, done.stdout
    assert (work / "ok.txt").read_text() == "ok" and not (PACKAGE_ROOT / "owned.txt").exists()


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_the_course_history_is_hidden(tmp_path):
    git = sandbox._git_folder(PACKAGE_ROOT)
    if git is None:
        pytest.skip("not a git checkout")
    (tmp_path / "work").mkdir()
    done = subprocess.run(sandbox.sandbox_prefix(tmp_path / "work", []) + ["ls", "-A", str(git)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout == "", (done.stdout, done.stderr)


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_the_shipped_course_models_are_readable_not_writable(tmp_path):
    from course_utils.models.load import SHIPPED

    work = tmp_path / "work"
    work.mkdir()
    script = (f"print(len(open({str(SHIPPED / 'manifest.json')!r}).read()) > 0)\n"
              f"try:\n    open({str(SHIPPED / 'new.txt')!r}, 'w')\nexcept OSError:\n    print('read-only')")
    done = subprocess.run(sandbox.sandbox_prefix(work, []) + ["python3", "-c", script], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "read-only"], done.stdout


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_a_virtual_environment_under_tmp_stays_visible(tmp_path, monkeypatch):
    venv = tmp_path / "venv"  # under /tmp, which the sandbox replaces with its own
    venv.mkdir()
    monkeypatch.setattr(sandbox.sys, "prefix", str(venv))
    (tmp_path / "work").mkdir()
    args = sandbox.sandbox_prefix(tmp_path / "work", [])
    assert ["--ro-bind", str(venv.resolve()), str(venv.resolve())] in [args[i:i + 3] for i in range(len(args))]


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_a_linked_virtual_environment_under_tmp_is_bound_where_the_link_is(tmp_path, monkeypatch):
    real = tmp_path / "elsewhere" / "venv"
    real.mkdir(parents=True)
    link = tmp_path / "checkout" / ".venv"  # a checkout under /tmp whose .venv links to a venv elsewhere
    link.parent.mkdir()
    link.symlink_to(real)
    monkeypatch.setattr(sandbox.sys, "prefix", str(link))
    (tmp_path / "work").mkdir()
    args = sandbox.sandbox_prefix(tmp_path / "work", [])
    assert ["--ro-bind", str(real.resolve()), str(link)] in [args[i:i + 3] for i in range(len(args))]


FORK_BOMB = """
import os, time
children = 0
try:
    while children < 2000:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
except OSError as exc:
    print(children, exc.errno)
"""


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_the_process_limit_binds_even_for_a_root_grader(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    limits = sandbox.Limits(processes=40)
    done = subprocess.run(sandbox.sandbox_prefix(work, [], limits) + ["python3", "-c", FORK_BOMB],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    children, errno = map(int, done.stdout.split())
    assert children < limits.processes and errno == 11, done.stdout  # EAGAIN: the limit, not the loop's end


@pytest.mark.skipif(not sandbox.as_root(), reason="the grader is not root")
def test_a_root_grader_runs_each_kernel_as_a_user_of_its_own(tmp_path):
    uids = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        done = subprocess.run(sandbox.sandbox_prefix(tmp_path / name, []) + ["sh", "-c", "id -u; id -G; touch ok"],
                              capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
        uid, groups = done.stdout.split("\n")[:2]
        assert done.returncode == 0 and groups == uid != "0", (done.stdout, done.stderr)
        assert (tmp_path / name / "ok").stat().st_uid == int(uid)
        uids.append(uid)
    assert uids[0] != uids[1]
