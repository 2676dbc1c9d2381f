"""The course's offline world: seeded text with known ground truth (corpus), tokenizers trained on it
(tokenization) and the model zoo of tiny models pretrained on it (zoo). Nothing here needs the network."""
