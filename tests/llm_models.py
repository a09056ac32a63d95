"""Moved to ``fixtures/llm.py`` (shared with ``tools/``); kept so test files written before the move still import.

New code imports ``from fixtures.llm import ...``.
"""

from fixtures.llm import BOS, COMMON, EOS, KINDS, greedy_json, make_lm, run_script, save_lm, train_tokenizer  # noqa: F401
