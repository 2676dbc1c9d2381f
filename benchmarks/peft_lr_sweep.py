"""Learning rates of lecture 07's PEFT comparison, chosen on a dev split, never on the held-out tasks.

Each method of section 3 (``course_utils.lora.peft_variant``) trains as the lecture trains it (same steps, batch
size and batches, ``finetune_on``) at each learning rate of a grid, once per seed. Its score on the **dev** tasks
(the held-out question family on training-split stories that training does not use, ``opposite_dev_tasks``)
picks the learning rate; the held-out score is printed beside it only to show how far dev optimism goes. A
choice at the edge of its grid is flagged: widen the grid until the best rate is bracketed.

    .venv/bin/python benchmarks/peft_lr_sweep.py                        # every method, the grids below, 3 seeds
    .venv/bin/python benchmarks/peft_lr_sweep.py --methods lora --lrs 1e-2 3e-2 --seeds 0 1
"""
from __future__ import annotations

import argparse
import os
import warnings

GRID = {"full": [1e-3, 3e-3, 1e-2], "top": [1e-3, 3e-3, 1e-2, 3e-2], "bitfit": [3e-2, 1e-1, 3e-1, 1.0],
        "adapter": [3e-3, 1e-2, 3e-2, 1e-1], "prompt": [1e-1, 3e-1, 1.0], "prefix": [1e-1, 2e-1, 5e-1, 1.0],
        "lora": [1e-2, 2e-2, 3e-2, 5e-2]}


def sweep(methods, seeds, lrs=None, profile_name="ci"):
    """Rows (method, lr, dev scores per seed, held-out scores per seed) for every method and learning rate."""
    import torch

    from course_utils.lora import choice_accuracy, finetune_on, opposite_dev_tasks, opposite_task, peft_variant
    from course_utils.models import load_pretrained
    from course_utils.profiles import setup
    from course_utils.sft import encode_chat, quiet_hf

    quiet_hf()
    warnings.filterwarnings("ignore", module="peft")
    profile = setup("07_lora_qlora", profile=profile_name, verbose=False)
    base, tokenizer = load_pretrained(profile["base_model"], progress=False)
    train_tasks, eval_tasks = opposite_task(profile["train_stories"], profile["eval_stories"])
    dev_tasks = opposite_dev_tasks(train_tasks)
    data = [encode_chat(tokenizer, t.messages()) for t in train_tasks]
    print(f"{len(train_tasks)} training tasks, {len(dev_tasks)} dev tasks, {len(eval_tasks)} held-out tasks; "
          f"{profile['steps']} steps, batch {profile['batch_size']}, seeds {seeds}", flush=True)
    rows = []
    for method in methods:
        for lr in lrs or GRID[method]:
            dev, held_out = [], []
            for seed in seeds:
                torch.manual_seed(seed)
                model = peft_variant(base, method, profile)
                finetune_on(model, data, tokenizer.pad_token_id, profile["steps"], lr, profile["batch_size"], seed)
                dev.append(choice_accuracy(model, tokenizer, dev_tasks))
                held_out.append(choice_accuracy(model, tokenizer, eval_tasks))
            rows.append((method, lr, dev, held_out))
            print(f"  {method:>8} lr {lr:<6g} dev {sum(dev) / len(dev):.3f}  held-out {sum(held_out) / len(held_out):.3f}",
                  flush=True)
    return rows


def table(rows) -> str:
    """A markdown table: per method and rate, dev and held-out mean [min, max]; the dev-best rate in bold."""
    mean = lambda xs: sum(xs) / len(xs)
    best = {}
    for method, lr, dev, _ in rows:
        if method not in best or mean(dev) > mean(best[method][1]):
            best[method] = (lr, dev)
    lines = ["| method | lr | dev accuracy: mean [min, max] | held-out accuracy: mean [min, max] | chosen |",
             "|---|---:|---|---|---|"]
    for method, lr, dev, held_out in rows:
        rates = [r[1] for r in rows if r[0] == method]
        chosen = ""
        if best[method][0] == lr:
            chosen = "**best on dev**" + (" (at the grid's edge)" if lr in (min(rates), max(rates)) else "")
        lines.append(f"| {method} | {lr:g} | {mean(dev):.3f} [{min(dev):.3f}, {max(dev):.3f}] | "
                     f"{mean(held_out):.3f} [{min(held_out):.3f}, {max(held_out):.3f}] | {chosen} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--lrs", nargs="+", type=float, help="one grid for every method (default: GRID)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "ci"))
    args = parser.parse_args()
    print(table(sweep(args.methods, args.seeds, args.lrs, args.profile)))


if __name__ == "__main__":
    main()
