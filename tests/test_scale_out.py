"""Scale-out: `course pretrain` under `accelerate launch` (2 CPU processes, gloo) matches one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_utils.pretrain import Windows, accelerate_launch, window_loader

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--max-iters", "12", "--eval-interval", "6", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
         "--block-size", "16", "--no-progress", "--sample", "0", "--seed", "3", "--lr", "1e-2", "--warmup", "2"]
LAUNCH = accelerate_launch(2)  # 2 CPU processes joined with gloo


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    from course_utils.world.corpus import make_corpus

    path = tmp_path_factory.mktemp("scale") / "stories.txt"
    path.write_text("\n".join(make_corpus(300)), encoding="utf-8")
    return path


def _pretrain(text_file: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> dict:
    head = launcher + ["-m"] if launcher else [sys.executable, "-m"]
    _run(head + ["course_utils", "pretrain", "--text", str(text_file), "--out", str(out), *SMALL, *extra])
    return json.loads((out / "pretrain.json").read_text())


def test_two_processes_train_like_one_at_the_same_global_batch(text_file, tmp_path):
    one = _pretrain(text_file, tmp_path / "one", "--batch-size", "8", "--device", "cpu")
    # --num-processes 2 restarts the command under `accelerate launch` (the README's explicit command is the same)
    two = _pretrain(text_file, tmp_path / "two", "--batch-size", "8", "--num-processes", "2")
    accumulated = _pretrain(text_file, tmp_path / "acc", "--batch-size", "4", "--grad-accum", "2", "--device", "cpu")
    assert (one["processes"], two["processes"]) == (1, 2)
    # the same windows, averaged in another order (all-reduce, accumulation): equal up to float rounding
    torch.testing.assert_close(torch.tensor(two["train_losses"]), torch.tensor(one["train_losses"]),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(accumulated["train_losses"]), torch.tensor(one["train_losses"]),
                               atol=1e-4, rtol=1e-4)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-4)
    assert one["train_losses"][-1] < one["train_losses"][0] - 0.3, "the runs should learn something"
    # the checkpoint the launched run saved loads with from_pretrained
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "two").config.n_layer == 2


def test_each_process_sees_its_own_shard_and_no_window_twice_per_epoch(tmp_path):
    n_tokens, block, batch = 203, 8, 6  # 195 windows, 32 global batches of 6 (3 windows dropped)
    _run(LAUNCH + [str(ROOT / "tests" / "scripts" / "shard_probe.py"), str(tmp_path / "seen"), str(n_tokens),
                   str(block), str(batch)])
    ranks = [json.loads((tmp_path / f"seen.{r}.json").read_text()) for r in (0, 1)]
    assert all(r["processes"] == 2 for r in ranks)
    assert len(ranks[0]["batches"]) == len(ranks[1]["batches"]) == (n_tokens - block) // batch
    assert all(len(b) == batch // 2 for r in ranks for b in r["batches"])
    seen = [start for r in ranks for b in r["batches"] for start in b]
    assert len(seen) == len(set(seen)), "a window was trained on twice in one epoch"
    assert not set(ranks[0]["batches"][0]) & set(ranks[1]["batches"][0])
    # together the two shards are exactly the single-process epoch
    single = [s for x, _ in window_loader(torch.arange(n_tokens), block, batch, seed=0) for s in x[:, 0].tolist()]
    assert sorted(seen) == sorted(single)


def test_window_loader_covers_each_start_once_per_epoch():
    loader = window_loader(torch.arange(50), 5, 5, seed=1)
    starts = [s for x, y in loader for s in x[:, 0].tolist()]
    assert sorted(starts) == list(range(45))
    x, y = next(iter(loader))
    assert torch.equal(y, x + 1), "targets are the inputs shifted by one token"
    again = [s for x, _ in loader for s in x[:, 0].tolist()]
    assert again != starts, "each epoch reshuffles"
    with pytest.raises(ValueError, match="block_size"):
        Windows(torch.arange(5), 5)


def test_batch_size_must_split_between_processes():
    from types import SimpleNamespace

    from course_utils.pretrain import pretrain

    two_processes = SimpleNamespace(num_processes=2, is_main_process=True)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        pretrain("abc " * 100, batch_size=7, accelerator=two_processes)


def test_num_processes_relaunches_the_same_options_under_accelerate():
    from course_utils.cli import build_parser
    from course_utils.pretrain import command_line, launch_command

    args = build_parser("pretrain").parse_args(["pretrain", "--text", "a.txt", "--n-layer", "2", "--no-progress",
                                                "--num-processes", "4", "--lr", "0.01"])
    argv = command_line(args)
    assert argv == ["--text", "a.txt", "--n-layer", "2", "--lr", "0.01", "--no-progress"]
    assert build_parser("pretrain").parse_args(["pretrain", *argv]).num_processes == 1, "launched processes train"
    command, env = launch_command(argv, 4, cores=8)
    assert command[1:5] == ["launch", "--multi_gpu", "--num_processes", "4"]
    assert command[-len(argv) - 3:] == ["-m", "course_utils", "pretrain", *argv]
    assert env["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", "2"), "2 threads each for 4 processes on 8 cores"
    with pytest.raises(ValueError, match=">= 2"):
        launch_command(argv, 1)
