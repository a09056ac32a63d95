"""Moved to ``fixtures/lm.py`` (shared with ``tools/``); kept so test files written before the move still import.

New code imports ``from fixtures.lm import ...``.
"""

from fixtures.lm import SPECIALS, TinyLlamaSpec, corpus_text, heldout_prompts, make_tiny_llama, train_tokenizer  # noqa: F401
