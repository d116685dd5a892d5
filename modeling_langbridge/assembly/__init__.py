"""Building models: shared vocabularies (vocab, corpus), `compose` (a vision tower + an LLM + a new projector),
adapters and pretraining-free `transfer` to another LLM, conversion of the official checkpoints, chat templates,
and the tiny local parts the tests, the quickstart and the demo build models from.

May import the model files (`..model`) and the shared helpers (`..errors`, `..files`, `..notices`); never the
analysis tools or the command line.
"""
