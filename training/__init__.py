"""The training recipes, installed as `langbridge_training` (this folder keeps its name in the repository).

pretrain.py and sft.py are the two stages, one page each around TRL's `SFTTrainer` (`accelerate launch -m
langbridge_training.sft --config ...`); arguments.py, data.py, collator.py, models.py, trainer.py and outputs.py are
what they share; caption_words.py holds stage 1's optional losses on the coefficients (`caption_word_loss`,
`coefficient_spread_loss`; off by default). The demo lives apart, in `demo/`, and builds on the recipes; the recipes never import it.
"""
