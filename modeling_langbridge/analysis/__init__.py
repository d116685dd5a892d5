"""Reading and evaluating models: the words each patch is made of (`interpret`), the paper's Figure-1 alignment
measure (`alignment`), VQA-style scoring (`evaluation`) and the harness runner with its lmms-eval plugin
(`harness`).

May import the model files, `..assembly` and the shared helpers; never the command line.
"""
