"""Local training of both adapters between gossip rounds, evaluation, and the site's data."""

from fedpeer.train.data import Example, load_site_data, make_batch, read_jsonl, split_examples
from fedpeer.train.loop import LocalTrainer, macro_f1

__all__ = [
    "Example",
    "LocalTrainer",
    "load_site_data",
    "macro_f1",
    "make_batch",
    "read_jsonl",
    "split_examples",
]
