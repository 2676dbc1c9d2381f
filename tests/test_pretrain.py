"""`course_utils.pretrain` and `course pretrain`: data packing, the model, a short run that learns,
checkpoints that round-trip through from_pretrained, and clear errors on bad input."""
import contextlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from course_utils import cli
from course_utils import pretrain as pt
from course_utils.world.corpus import make_corpus

ROOT = Path(__file__).resolve().parents[1]
TEXT = "\n".join(make_corpus(400, seed=3))
TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=16)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_encode_text_round_trips(kind):
    tokenizer, ids = pt.encode_text(TEXT, kind, vocab_size=300)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert tokenizer.decode(ids[:200]) == TEXT[: len(tokenizer.decode(ids[:200]))]
    assert len(ids) < len(TEXT) if kind == "bpe" else len(ids) == len(TEXT)


def test_batches_are_shifted_windows_and_blocks_cover_the_stream():
    data = torch.arange(1000)
    x, y = pt.get_batch(data, 16, 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 16) and x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows, shifted by one
    bx, by = pt.make_blocks(data, 16)
    assert bx.shape == (62, 16) and torch.equal(bx.flatten(), data[:992]) and torch.equal(by, bx + 1)
    with pytest.raises(ValueError, match="smaller block size"):
        pt.get_batch(torch.arange(10), 16, 2)
    with pytest.raises(ValueError, match="smaller block size"):
        pt.make_blocks(torch.arange(10), 16)


def test_build_gpt2_and_its_errors():
    model = pt.build_gpt2(40, n_layer=1, n_head=2, n_embd=16, block_size=8, eos_token_id=0)
    assert model.config._attn_implementation == "sdpa" and model.config.n_positions == 8
    assert pt.count_parameters(model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="not divisible by n_head"):
        pt.build_gpt2(40, n_head=3, n_embd=16)
    with pytest.raises(ValueError, match="positive int"):
        pt.build_gpt2(40, n_layer=0)


def test_devices():
    assert pt.resolve_device("cpu") == torch.device("cpu")
    assert pt.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="one of"):
        pt.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pt.resolve_device("cuda")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    result = pt.pretrain(TEXT, "char", **TINY, max_iters=120, lr=1e-2, warmup=10, eval_interval=60,
                         device="cpu", out_dir=out, progress=False, verbose=False)
    return result, out


def test_pretraining_beats_the_unigram_baseline(trained):
    (model, tokenizer, history, val_loss), _ = trained
    _, ids = pt.encode_text(TEXT, tokenizer=tokenizer)
    train_ids, val_ids = pt.split_ids(ids)
    counts = torch.bincount(train_ids, minlength=len(tokenizer)).double() + 1
    unigram = -(counts / counts.sum()).log()[val_ids].mean().item()
    assert val_loss < unigram - 0.5, (val_loss, unigram)
    assert [s for s, _ in history.evals] == [60, 120] and len(history.lrs) == 120
    assert math.isfinite(history.tokens_per_s) and history.tokens_per_s > 0
    assert history.losses[0] > math.log(len(tokenizer)) - 0.5  # starts near a uniform guess


def test_checkpoint_round_trips_through_from_pretrained(trained):
    (model, tokenizer, _, val_loss), out = trained
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok.encode("mia has two cups .")])
    assert torch.equal(ids, torch.tensor([tokenizer.encode("mia has two cups .")]))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert (out / "pretrain.json").is_file() and f"{val_loss}"[:6] in (out / "pretrain.json").read_text()
    model2, tok2 = pt.load_checkpoint(out)
    assert tok2.decode(ids[0]) == "mia has two cups ."


def test_pretrain_rejects_bad_input():
    with pytest.raises(ValueError, match="at least"):
        pt.pretrain("too short", **TINY, max_iters=1)
    with pytest.raises(ValueError, match="larger than the validation data"):
        pt.pretrain(TEXT[:3000], "char", n_layer=1, n_head=2, n_embd=16, block_size=512, max_iters=1)
    with pytest.raises(ValueError, match="tokenizer_kind"):
        pt.pretrain(TEXT, "words", **TINY, max_iters=1)


def _course(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "course_utils", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_trains_reports_and_saves(tmp_path):
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    result = _course("pretrain", "--text", str(tmp_path / "text.txt"), "--n-layer", "1", "--n-head", "2",
                     "--n-embd", "16", "--block-size", "16", "--batch-size", "8", "--max-iters", "20",
                     "--eval-interval", "10", "--device", "cpu", "--out", str(tmp_path / "out"), "--no-progress",
                     "--sample", "10")
    assert result.returncode == 0, result.stderr
    assert "tokens/s" in result.stdout and "val loss" in result.stdout and "step    10/20" in result.stdout
    assert "sample:" in result.stdout and "from_pretrained" in result.stdout
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.n_embd == 16


def test_cli_missing_file_exits_non_zero_with_a_message(tmp_path):
    result = _course("pretrain", "--text", str(tmp_path / "nope.txt"))
    assert result.returncode == 2 and "is not a file" in result.stderr


def _main(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("content, extra, words", [
    (b"\xff\xfe\x00 not utf-8 " * 50, [], "not UTF-8"),
    (b"short", [], "at least"),
    (TEXT.encode(), ["--n-embd", "30", "--n-head", "4"],
     "--n-embd 30 is not divisible by --n-head 4 (each head gets n_embd / n_head dimensions): use a multiple of 4 "
     "such as 28 or 32"),
    (TEXT.encode(), ["--out", "t.txt/ckpt"], "is a file, so no folder can be made under it"),
    (TEXT.encode(), ["--out", "t.txt"], "is a file; give a folder"),
    (TEXT[:2000].encode(), ["--block-size", "4096"], "smaller block size"),
])
def test_cli_bad_inputs_say_what_to_do(tmp_path, content, extra, words):
    (tmp_path / "t.txt").write_bytes(content)
    extra = [str(tmp_path / a) if a.startswith("t.txt") else a for a in extra]
    code, err = _main(["pretrain", "--text", str(tmp_path / "t.txt"), "--max-iters", "1", "--no-progress", *extra])
    assert code == 2 and words in err and err.startswith("course pretrain: ")


def test_cli_unwritable_out_is_found_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as root: every folder is writable")
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    code, err = _main(["pretrain", "--text", str(tmp_path / "t.txt"), "--out", str(locked / "ckpt")])
    assert code == 2 and "is not writable for you" in err


def test_cli_help_documents_every_flag_with_its_default():
    parser = cli.build_parser("pretrain")
    sub = parser._subparsers._group_actions[0].choices["pretrain"]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings[0]} has no help"
            if action.default not in (None, False) and action.dest != "text":
                assert "default" in action.help, f"{action.option_strings[0]} does not say its default"


def test_divisibility_message_suggests_multiples():
    assert "such as 63 or 66" in pt.divisibility_message(64, 3)
    assert "such as 4, or" in pt.divisibility_message(3, 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_unavailable_device(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    code, err = _main(["pretrain", "--text", str(tmp_path / "t.txt"), "--device", "cuda", "--max-iters", "1"])
    assert code == 2 and "use 'cpu' or 'auto'" in err


def test_pretrain_validates_on_val_text_when_given():
    from course_utils.world.corpus import make_split_stories

    train_text = "\n".join(s.text for s in make_split_stories(300, "train"))
    val_text = "\n".join(s.text for s in make_split_stories(40, "eval"))
    run = pt.pretrain(train_text, "char", n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=3,
                      eval_interval=3, progress=False, verbose=False, val_text=val_text)
    tokenizer, val_ids = pt.encode_text(val_text, tokenizer=run.tokenizer)
    assert run.val_loss == pytest.approx(pt.estimate_loss(run.model, val_ids, 16, 200), rel=1e-5)
