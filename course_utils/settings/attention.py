"""Sizes for 01_attention: word2vec on the corpus, probing stories, random checks; the gpu profile
visualises a real BERT from the hub."""
NOTEBOOK = "01_attention"

CI = {"model": "tiny-bert", "w2v_stories": 1500, "w2v_steps": 300, "probe_stories": 100, "n_random_checks": 20}
CPU = {**CI, "w2v_stories": 4000, "w2v_steps": 1500, "probe_stories": 400, "n_random_checks": 100}
GPU = {**CPU, "model": "bert-base-uncased"}
