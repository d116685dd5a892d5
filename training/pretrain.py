"""Stage 1: pretrain the LangBridge projector on image-caption pairs, vision tower and LLM frozen.

    python -m training.pretrain --config configuration/pretrain_qwen2-0.5b.yaml
    langbridge train pretrain --config configuration/pretrain_qwen2-0.5b.yaml
    accelerate launch --config_file configuration/accelerate/ddp.yaml -m training.pretrain --config ...

Saves the model folder (`output_dir`) and the projector alone as an adapter (`output_dir/adapter`), ready for
SFT on this LLM or `langbridge transfer` to another.
"""

from pathlib import Path

from trl import ModelConfig, SFTConfig, TrlParser

from modeling_langbridge.assembly.adapter import LangBridgeAdapter
from modeling_langbridge.errors import LangBridgeUsageError

from .arguments import LangBridgeArguments, packing_of
from .caption_words import LOSSES as COEFFICIENT_LOSSES
from .collator import LangBridgeCollator
from .data import prepare_training_data
from .models import load_for_stage
from .outputs import run_output, save_adapter
from .trainer import LangBridgeTrainer


def main(script_args: LangBridgeArguments, training_args: SFTConfig, model_args: ModelConfig, callbacks=None):
    script_args.check()  # every setting, before any work
    packing = packing_of(training_args, model_args)  # padding_free / packing, done here for image-text data
    with run_output(
        training_args, model_args.model_name_or_path, script_args.overwrite_output_dir, adapter=True
    ) as resume:  # output_dir: this run's alone, an earlier run there continued or replaced only when asked
        ################
        # Model: only the projector learns
        ################
        model, processor = load_for_stage(
            model_args,
            "pretrain",
            train_vision_tower=False,
            output_dir=training_args.output_dir,
            use_kernels=script_args.use_kernels,
        )
        packing = packing.for_model(model)  # refused if its attention would let packed samples see each other

        ################
        # Data: image-caption pairs, images opened lazily (packed into rows first with `packing`)
        ################
        mode = script_args.data_format or "plain"
        train_dataset, image_loader, report = prepare_training_data(
            script_args, processor, model.config.image_seq_length, training_args.max_length, mode, packing
        )

        ################
        # Training
        ################
        trainer = LangBridgeTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            data_collator=LangBridgeCollator(processor, training_args.max_length, mode, packing),
            processing_class=processor,
            projector_lr=script_args.projector_lr,
            data_report=report,
            image_loader=image_loader,
            callbacks=callbacks,
            **coefficient_losses_for(script_args, model),
        )
        trainer.train(resume_from_checkpoint=resume)
        trainer.report_data()

        ################
        # Save: the model folder, and the adapter on its own, each whole
        ################
        trainer.save_model(training_args.output_dir)  # the processor too
        trainer.save_state()  # trainer_state.json: the step and log history, read by `langbridge alignment`
        if trainer.is_world_process_zero() and model.config.model_type == "langbridge":  # (the demo trains LLaVA too)
            adapter = LangBridgeAdapter.from_model(trainer.model, processor.tokenizer)
            save_adapter(adapter, Path(training_args.output_dir) / "adapter")  # replaces only an adapter a run wrote
    return trainer


def coefficient_losses_for(script_args: LangBridgeArguments, model) -> dict:
    """Stage 1's optional losses on LangBridge's coefficients, by weight; refused for a model without them."""
    losses = {name: getattr(script_args, name) for name in COEFFICIENT_LOSSES}
    for name, weight in losses.items():
        if weight and model.config.model_type != "langbridge":
            raise LangBridgeUsageError(
                f"{name} is for LangBridge models (coefficients over a shared vocabulary); this is a "
                f"{model.config.model_type!r} model. Set {name}: 0."
            )
    return losses


if __name__ == "__main__":
    parser = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
