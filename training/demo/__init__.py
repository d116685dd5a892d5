"""`langbridge demo`: the paper's transfer experiment in miniature, on one CPU, through the recipes.

experiment.py runs the stages and writes the report (report.py); world.py is the synthetic world, vision_encoder.py
and text_lm.py train the small encoder and LLMs, stage1_captions.py measures transfer before any SFT, study.py runs
it over seeds and both coefficient activations, transfer_diagnosis.py measures why a transfer fails, and
llava_baseline.py builds transformers' LLaVA of the same parts (run A). The recipes (`..pretrain`, `..sft`) never
import from here.
"""
