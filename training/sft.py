"""Stage 2: supervised fine-tuning of projector + LLM on conversations with images.

    python -m training.sft --config configuration/sft_qwen2-0.5b.yaml                 # full LLM
    python -m training.sft --config configuration/sft_qwen2-0.5b_lora.yaml            # LoRA (use_peft)
    python -m training.sft --config configuration/sft_qwen2-0.5b_qlora.yaml           # QLoRA (+ load_in_4bit)
    accelerate launch --config_file configuration/accelerate/deepspeed_zero3.yaml -m training.sft --config ...

Full training saves a model folder. LoRA/QLoRA save the PEFT adapter (LoRA weights + the projector, trained in
full) in `output_dir`, loadable with `PeftModel.from_pretrained(base, output_dir)`, and, with `merge_lora`, the
LoRA merged into a full-precision copy of the base in `output_dir/merged`, a plain LangBridge folder.
"""

import torch
from trl import ModelConfig, SFTConfig, TrlParser

from modeling_langbridge.errors import LangBridgeUsageError
from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted

from .arguments import LangBridgeArguments, packing_of
from .caption_words import LOSSES as COEFFICIENT_LOSSES
from .collator import LangBridgeCollator
from .data import prepare_training_data
from .models import load_for_stage, lora_config, resolve_model
from .outputs import folder_written_whole, run_output
from .trainer import LangBridgeTrainer, peft_reads_old_checkpointing_name


def main(script_args: LangBridgeArguments, training_args: SFTConfig, model_args: ModelConfig, callbacks=None):
    script_args.check()  # every setting, before any work
    packing = packing_of(training_args, model_args)  # padding_free / packing, done here for image-text data
    for name in COEFFICIENT_LOSSES:
        if getattr(script_args, name):
            raise LangBridgeUsageError(
                f"{name} is a stage-1 setting (langbridge train pretrain); remove it from the SFT recipe."
            )
    with run_output(
        training_args, model_args.model_name_or_path, script_args.overwrite_output_dir
    ) as resume:  # output_dir: this run's alone, an earlier run there continued or replaced only when asked
        ################
        # Model: projector + LLM (full, LoRA or QLoRA); vision tower frozen unless asked
        ################
        model, processor = load_for_stage(
            model_args,
            "sft",
            script_args.train_vision_tower,
            training_args.output_dir,
            use_kernels=script_args.use_kernels,
        )
        packing = packing.for_model(model)  # refused if its attention would let packed samples see each other

        ################
        # Data: conversations, assistant replies learned, images opened lazily (packed into rows first with `packing`)
        ################
        mode = script_args.data_format or "chat"
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
            peft_config=lora_config(model_args, script_args.train_vision_tower),
            projector_lr=script_args.projector_lr,
            vision_tower_lr=script_args.vision_tower_lr,
            data_report=report,
            image_loader=image_loader,
            callbacks=callbacks,
        )
        trainer.train(resume_from_checkpoint=resume)
        trainer.report_data()

        ################
        # Save, each part whole
        ################
        trainer.save_model(training_args.output_dir)
        trainer.save_state()  # trainer_state.json: the step and log history, read by `langbridge alignment`
        if model_args.use_peft and script_args.merge_lora and trainer.is_world_process_zero():
            save_merged(
                resolve_model(model_args.model_name_or_path, training_args.output_dir, script_args.use_kernels),
                training_args.output_dir,
                processor,
                use_kernels=script_args.use_kernels,
                dtype=model_args.dtype,
            )
    return trainer


def save_merged(
    base_path: str, adapter_dir: str, processor, use_kernels: bool | None = None, dtype: str | None = None
) -> str:
    """The LoRA merged into a full-precision copy of the base model (a QLoRA base is re-read unquantized), saved in
    the dtype the recipe loads the model with (`dtype`; float32 when unset or `auto`)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(
        base_path, dtype=torch.float32, use_kernels=hub_kernels_wanted(use_kernels)
    )
    with peft_reads_old_checkpointing_name():
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    if dtype not in (None, "auto"):
        merged = merged.to(getattr(torch, dtype))
    out = f"{adapter_dir}/merged"
    with folder_written_whole(out) as fresh:  # a previous merged/ goes only once this one is complete
        merged.save_pretrained(fresh)
        processor.save_pretrained(fresh)
    return out


if __name__ == "__main__":
    parser = TrlParser((LangBridgeArguments, SFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
