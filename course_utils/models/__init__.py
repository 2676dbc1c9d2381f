"""The course's own models: their recipes, the command that trains them, and the weights shipped with the package.

``load_pretrained("tiny-gpt")`` returns a shipped model and its tokenizer at once (nothing trains on first
use); hub ids and local folders go through ``from_pretrained``. ``course models build`` retrains the
shipped weights from ``recipes.RECIPES`` (needed after a change to a recipe or to the world's text; a test
says so), and ``course models check`` verifies them. The world (``course_utils.world``) only makes data.
"""
from .load import course_model_path, hub_reachable, load_pretrained, models_dir
from .recipes import RECIPES

__all__ = ["RECIPES", "course_model_path", "hub_reachable", "load_pretrained", "models_dir"]
