"""The synthetic side of minift: the generated story world (world, lexicon, templates), its base
tasks and verifiable instructions (tasks, instructions, builders, splits), the simulated
demonstrators who write the SFT answers (demonstrators), IFEval's checkers and scoring (checkers,
ifeval_text, scoring) and the gold judge that ranks preference pairs and rewards PPO (gold).

The method (minift/model.py, engine, tokenizer, training, checkpoint, config, formats, evaluation) works on
any text; this package is the world it is trained and measured in here. Only minift/evaluation.py
imports from it (the scoring), and it imports nothing of the method (tests/test_layout.py)."""
