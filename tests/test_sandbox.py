"""The grader's sandbox command: what it hides and keeps, and the fallback where bwrap is missing."""
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

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


def sandboxed(work, script: str, hide=()) -> subprocess.CompletedProcess:
    """Run Python ``script`` in the sandbox of folder ``work`` (created), as a graded kernel would."""
    work.mkdir(exist_ok=True)
    return subprocess.run(sandbox.sandbox_prefix(work, list(hide)) + [sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PACKAGE_ROOT)})


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_sandbox_keeps_the_course_and_writes_only_its_own(tmp_path):
    work = tmp_path / "work"
    script = (f"import course_utils; print(course_utils.__file__)\n"
              f"open({str(work / 'ok.txt')!r}, 'w').write('ok')\n"
              f"try:\n    open({str(PACKAGE_ROOT / 'course_utils' / 'owned.txt')!r}, 'w')\n"
              f"except OSError as e:\n    print('refused')")
    done = sandboxed(work, script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(PACKAGE_ROOT / "course_utils" / "__init__.py"), "refused"], done.stdout
    assert (work / "ok.txt").read_text() == "ok" and not (PACKAGE_ROOT / "course_utils" / "owned.txt").exists()


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_only_an_allowlist_of_folders_exists_in_the_sandbox(tmp_path):
    """Another checkout's solutions, this checkout's solutions and history, home folders: none exist there."""
    (PACKAGE_ROOT / "build").mkdir(exist_ok=True)
    other = Path(tempfile.mkdtemp(prefix="other-checkout-", dir=PACKAGE_ROOT / "build"))  # outside /tmp
    try:
        (other / "solutions").mkdir()
        (other / "solutions" / "01_attention.ipynb").write_text("the answers")
        git = sandbox._git_folder(PACKAGE_ROOT)
        secrets = [other / "solutions" / "01_attention.ipynb", other, PACKAGE_ROOT / "solutions",
                   PACKAGE_ROOT / "lectures", PACKAGE_ROOT / "tests", *([git] if git else []), Path.home() / ".bashrc",
                   Path("/home"), Path("/var"), Path("/opt"), Path("/srv"), Path("/mnt")]
        script = (f"import os\nfor p in {[str(p) for p in secrets]!r}:\n    print(p, os.path.exists(p))\n"
                  f"print(sorted(os.listdir({str(PACKAGE_ROOT)!r})), sorted(os.listdir('/')))")
        done = sandboxed(tmp_path / "work", script)
    finally:
        shutil.rmtree(other)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:-1] == [f"{p} False" for p in secrets], done.stdout
    venv = Path(sys.prefix).resolve()  # `make install` puts the virtual environment inside the checkout
    inside = [venv.relative_to(PACKAGE_ROOT.resolve()).parts[0]] if venv.is_relative_to(PACKAGE_ROOT.resolve()) else []
    assert lines[-1].startswith(f"{sorted(['course_utils', *inside])} "), lines[-1]
    assert set(eval(lines[-1].split("] ", 1)[1])) <= {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc",
                                                      "sbin", "tmp", "usr", *(p.parts[1] for p in
                                                                               sandbox.readable_folders())}


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_a_hidden_folder_inside_the_allowlist_looks_empty(tmp_path):
    secret = PACKAGE_ROOT / "course_utils" / "models"
    done = sandboxed(tmp_path / "work", f"import os; print(os.listdir({str(secret)!r}))", hide=[secret])
    assert done.returncode == 0 and done.stdout.strip() == "[]", (done.stdout, done.stderr)


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_tmp_is_the_sandboxs_own_and_bounded(tmp_path):
    script = ("import errno\nblock, total = bytes(1 << 20), 0\ntry:\n    for n in range(16):\n"
              "        with open(f'/tmp/big{n}', 'wb') as f:\n            for _ in range(200):\n"
              "                f.write(block); f.flush(); total += 1\n"
              "except OSError as e:\n    print(errno.errorcode[e.errno], total)")
    done = sandboxed(tmp_path / "work", script)  # files of 200 MiB each, under the file size limit
    assert done.returncode == 0, done.stderr
    code, mib = done.stdout.split()
    assert code == "ENOSPC" and int(mib) <= sandbox.Limits().tmp_bytes >> 20, done.stdout
    assert not list(Path("/tmp").glob("big*"))


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


TWO_PROCESSES = """
import os, time
if os.fork() == 0:
    block = bytearray(400 << 20)  # each process under its own address-space limit...
    time.sleep(5)
    os._exit(0)
block = bytearray(400 << 20)  # ...but the two together over the kernel's memory
_, status = os.wait()
print(os.WIFSIGNALED(status) and os.WTERMSIG(status))
"""


@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="no sandbox here")
def test_a_kernels_processes_share_one_memory_limit_where_cgroups_can_be_made(tmp_path):
    limits = sandbox.Limits(memory_bytes=600 << 20)
    cgroups = sandbox.kernel_cgroups(f"course-grade-test-{tmp_path.name}", limits)
    if not cgroups:
        pytest.skip("this machine lets the grader make no cgroup (the per-process limits still hold)")
    try:
        assert [(c / "cgroup.procs").read_text() for c in cgroups] == ["", ""]
        (tmp_path / "work").mkdir()
        done = subprocess.run(sandbox.sandbox_prefix(tmp_path / "work", [], limits, cgroups)
                              + [sys.executable, "-c", TWO_PROCESSES], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin"})
        reached = sandbox.limit_reached(cgroups, limits)
    finally:
        sandbox.remove_cgroups(cgroups)
    assert reached == "killed at the memory limit (0.585938 GiB)", reached
    # the out-of-memory killer ends one process: the sandbox exits with 128 + 9, or the parent sees its child killed
    assert done.returncode in (137, -9) or done.stdout.strip() == "9", (done.returncode, done.stdout, done.stderr)
    assert not any(c.exists() for c in cgroups)


FILL = """
import errno, sys
try:
    for n in range(100000):
        with open(f"f{n}", "wb") as f:
            f.write(bytes(int(sys.argv[1])))
except OSError as e:
    print(errno.errorcode[e.errno], n)
"""


@pytest.mark.skipif(not sandbox.as_root(), reason="only a root grader mounts the writable folder")
def test_the_writable_folder_is_a_bounded_tmpfs_where_the_grader_may_mount(tmp_path):
    limits = sandbox.Limits(workdir_bytes=64 << 20, workdir_files=500)
    work = tmp_path / "work"
    work.mkdir()
    if not sandbox.mount_workdir(work, limits):
        pytest.skip("this machine does not let the grader mount a tmpfs (the per-file size limit still holds)")
    try:
        outcome = []
        for size in (1 << 20, 1):  # large files, then many small ones
            done = subprocess.run(sandbox.sandbox_prefix(work, [], limits) + [sys.executable, "-c", FILL, str(size)],
                                  capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
            outcome.append(done.stdout.split())
            for f in work.iterdir():
                f.unlink()
    finally:
        sandbox.unmount_workdir(work)
    assert outcome[0][0] == "ENOSPC" and int(outcome[0][1]) <= 64, outcome  # 64 MiB, then no more space
    assert outcome[1][0] == "ENOSPC" and int(outcome[1][1]) <= 500, outcome  # 500 files, then no more
    assert not list(work.iterdir())  # nothing reached the host's disk
