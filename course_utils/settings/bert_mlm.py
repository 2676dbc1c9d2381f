"""Sizes for 02_bert_mlm: the tiny BERT pretrained in the lecture, its 80-10-10 twins and the lab's run."""
NOTEBOOK = "02_bert_mlm"

TWIN = {"hidden_size": 64, "layers": 2, "steps": 400, "batch_size": 32, "lr": 5e-3}
# The downstream probe of the twins: frozen features, a linear classifier on few or many labelled examples.
PROBE = {"train_stories": 1500, "test_stories": 3000, "filler_stories": 300, "labelled": [8, 32, 1000], "draws": 10}

CI = {"train_stories": 3000, "eval_stories": 300, "vocab_size": 300, "hidden_size": 64, "layers": 2,
      "steps": 400, "batch_size": 32, "lr": 5e-3, "lab_steps": 60, "hub_model": None, "twin": TWIN,
      "probe": PROBE}
CPU = {**CI, "train_stories": 8000, "eval_stories": 1000, "vocab_size": 400, "hidden_size": 128,
       "steps": 800, "batch_size": 64, "lr": 3e-3, "lab_steps": 300}
GPU = {**CI, "train_stories": 20000, "eval_stories": 2000, "vocab_size": 500, "hidden_size": 256, "layers": 4,
       "steps": 3000, "batch_size": 128, "lr": 1e-3, "lab_steps": 1000, "hub_model": "bert-base-uncased"}
