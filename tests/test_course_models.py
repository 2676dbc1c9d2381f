"""The course models shipped with the package: current with their recipes and the world; one command rebuilds them."""
import json
import subprocess
import sys

import pytest
import torch

from course_utils.models import build, course_model_path, load_pretrained, recipes
from course_utils.models.load import SHIPPED, read_manifest
from course_utils.pretrain import build_gpt2
from course_utils.world.tokenization import train_char


def test_every_shipped_model_matches_its_recipe_the_world_and_its_sums():
    found = build.problems(SHIPPED)
    assert not found, ("the shipped course models are stale: " + "; ".join(found)
                       + ". Rebuild them with `course models build` (about 10 minutes on 2 cores) and commit "
                       "course_utils/models/weights")
    manifest = read_manifest(SHIPPED)
    assert set(manifest["models"]) == set(recipes.RECIPES) and manifest["seed"] == 0
    assert manifest["built_with"]["threads"] == recipes.TRAIN_THREADS


def test_the_shipped_weights_are_small():
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 8 * 2**20, f"the shipped models take {size / 2**20:.1f} MiB; keep the package a few MB"


def test_a_changed_recipe_fails_loading_with_the_command_to_run(monkeypatch):
    changed = {**recipes.RECIPES["tiny-bert"], "train": {**recipes.RECIPES["tiny-bert"]["train"], "steps": 601}}
    monkeypatch.setitem(recipes.RECIPES, "tiny-bert", changed)
    with pytest.raises(RuntimeError, match="course models build"):
        load_pretrained("tiny-bert")
    assert build.problems(SHIPPED) == [f"tiny-bert: built from another recipe or world text (key "
                                       f"{read_manifest(SHIPPED)['models']['tiny-bert']['key']}, "
                                       f"now {recipes.recipe_key('tiny-bert')})"]


def test_a_seed_changes_the_training_seed_of_the_model_and_its_bases_only():
    seeded = recipes.with_seed(recipes.RECIPES["tiny-gpt-rm"], 3)
    assert seeded["train"]["seed"] == seeded["base_recipe"]["train"]["seed"] == 3
    assert seeded["base_recipe"]["base_recipe"]["train"]["seed"] == 3
    assert seeded["data"] == recipes.RECIPES["tiny-gpt-rm"]["data"]
    assert recipes.RECIPES["tiny-gpt-rm"]["train"]["seed"] == 0, "with_seed must not change the shared recipes"
    assert recipes.recipe_key("tiny-gpt", 3) != recipes.recipe_key("tiny-gpt")
    with pytest.raises(ValueError, match="not a course model"):
        recipes.recipe_key("tiny-gtp")


@pytest.fixture()
def toy_models(monkeypatch, tmp_path):
    """Two toy course models (a base and one derived from it) whose trainers take a second."""
    def base(recipe, progress=True):
        torch.manual_seed(recipe["train"]["seed"])
        tokenizer = train_char("abc " * 50)
        return build_gpt2(len(tokenizer), 1, 1, 8, 8), tokenizer

    def derived(recipe, progress=True):
        model, tokenizer = load_pretrained(recipe["base"])  # from the folder being built
        with torch.no_grad():
            model.transformer.wte.weight.add_(1.0)
        return model, tokenizer

    toy = {"toy": {"train": {"seed": 0}}}
    toy["toy-derived"] = {"base": "toy", "base_recipe": toy["toy"], "train": {"seed": 0}}
    monkeypatch.setattr(recipes, "RECIPES", toy)
    monkeypatch.setattr(build, "RECIPES", toy)
    monkeypatch.setattr("course_utils.models.load.RECIPES", toy)
    monkeypatch.setattr(build, "TRAINERS", {"toy": base, "toy-derived": derived})
    monkeypatch.delenv("COURSE_MODELS_DIR", raising=False)
    return tmp_path / "models"


def test_build_writes_models_and_a_manifest_that_check_and_load_use(toy_models, monkeypatch):
    manifest = build.build(out=toy_models, seed=1, progress=False)
    assert set(manifest["models"]) == {"toy", "toy-derived"} and manifest["seed"] == 1
    assert json.loads((toy_models / "manifest.json").read_text()) == manifest
    assert build.problems(toy_models) == []
    monkeypatch.setenv("COURSE_MODELS_DIR", str(toy_models))
    assert course_model_path("toy-derived") == toy_models / "toy-derived"
    base, _ = load_pretrained("toy")
    derived, _ = load_pretrained("toy-derived")
    torch.testing.assert_close(derived.transformer.wte.weight, base.transformer.wte.weight + 1)
    (toy_models / "toy" / "config.json").write_text((toy_models / "toy" / "config.json").read_text() + " ")
    assert build.problems(toy_models) == ["toy: its files differ from the SHA-256 sums in the manifest"]
    with pytest.raises(ValueError, match="another --out"):
        build.build(out=toy_models, seed=2, progress=False)


def test_a_missing_model_says_how_to_build_it(toy_models, monkeypatch):
    monkeypatch.setenv("COURSE_MODELS_DIR", str(toy_models))
    with pytest.raises(FileNotFoundError, match=f"course models build --seed 0 --out {toy_models}"):
        load_pretrained("toy")


def test_course_models_check_exits_nonzero_on_an_empty_folder(tmp_path):
    done = subprocess.run([sys.executable, "-m", "course_utils", "models", "check", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "tiny-bert: missing" in done.stderr and "course models build --seed 0 --out" in done.stderr


def test_a_changed_world_part_makes_only_the_models_that_read_it_stale(monkeypatch):
    """Module 08's reasoning world changing must not force a rebuild of the models of modules 01-06."""
    before = {name: recipes.recipe_key(name) for name in recipes.RECIPES}
    monkeypatch.setattr(recipes, "make_mixture", lambda n, **kw: ["a new episode ."] * n)
    recipes.world_fingerprint.cache_clear()
    try:
        after = {name: recipes.recipe_key(name) for name in recipes.RECIPES}
    finally:
        recipes.world_fingerprint.cache_clear()
    assert [name for name in before if before[name] != after[name]] == ["tiny-gpt-reasoner"]
    with pytest.raises(ValueError, match="not a part of the world"):
        recipes.world_fingerprint("weather")
