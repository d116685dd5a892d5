"""Known one-off notices of our dependencies that tell a `langbridge` user nothing to act on, each dropped by its
logger and the start of its text (never a blanket filter: everything else these loggers say still shows)."""

import logging

KNOWN_NOTICES = (
    # Without torchvision (no CPU build of it here), transformers serves CLIP and SigLIP with their PIL image
    # processors, which give the same pixel values; it says so once per class.
    ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision (not installed); falling back"),
    ("transformers.utils.import_utils", "`SiglipImageProcessor` requires torchvision (not installed); falling back"),
    # bitsandbytes, imported with TRL/PEFT on a CPU with AVX512-BF16, tries a Hub kernel for 4-bit matmuls and falls
    # back to its own when it cannot have it (offline, or untrusted); nothing here runs 4-bit on the CPU.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"),
)


class DropKnownNotice(logging.Filter):
    """Drops the records of one logger whose message starts with `text` (a string or a tuple of them)."""

    def __init__(self, text: str | tuple[str, ...]):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.text)


def quiet_known_notices() -> None:
    """Install the filters (once); the command line calls this before it imports the libraries that log them."""
    for name, text in KNOWN_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNotice) and f.text == text for f in logger.filters):
            logger.addFilter(DropKnownNotice(text))
