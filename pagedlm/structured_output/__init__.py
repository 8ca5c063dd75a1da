"""Structured outputs: grammars that constrain sampling (JSON schema, regex, choice, EBNF).

``validate`` runs in the frontend (cheap checks, so a bad schema is a 400 before anything is
queued); ``manager`` and ``xgrammar_backend`` run in the engine core next to the scheduler;
``apply`` is the runner's side (the token bitmask applied to the logits).
"""
