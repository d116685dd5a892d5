"""Why a transferred adapter works on one pair of LLMs and not another: measures on a finished demo run.

A visual token on LLM-1 is `c @ E1`; after `transfer` the same coefficients `c` meet E2. Transfer can only work as
far as the two tables agree on the shared tokens (fits of one onto the other, the agreement of their token-to-token
similarities) and as far as `c` says something in words rather than in LLM-1's private geometry (does the largest
coefficient among the colour, shape and count words name the true one). With more shared tokens T than LLM-1's width
d, T - d directions of every `c` would be invisible during stage 1 and arrive untrained on LLM-2 (`invisible_share_*`
measures it; it is zero when T <= d, as in the demo, whose LLMs share 48 whole-word tokens).
"""

import torch


def column_space_projector(embeddings: torch.Tensor) -> torch.Tensor:
    """P [T, T], the orthogonal projector onto the span of E's columns: `c @ P @ E == c @ E` for every c."""
    basis, singular, _ = torch.linalg.svd(embeddings.double(), full_matrices=False)
    kept = basis[:, singular > singular.max() * 1e-10]
    return kept @ kept.T


def held_out_fit(source: torch.Tensor, target: torch.Tensor, orthogonal: bool) -> float:
    """R^2 of predicting E2's rows from E1's on tokens not used for the fit (two folds, even and odd rows):
    a least-squares linear map, or an orthogonal one (Procrustes) after centring and scaling both. It means something
    only with more tokens than dimensions: with fewer (the demo's 48 shared tokens in widths 64 and 96) the map is
    underdetermined and held-out rows come out wrong even for an exact rotation, so the study reads
    `similarity_agreement` instead."""
    scores = []
    for fit, test in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        x, y = source.double(), target.double()
        mx, my = x[fit].mean(0), y[fit].mean(0)
        x, y = x - mx, y - my
        if orthogonal:
            x, y = x / x[fit].norm(), y / y[fit].norm()
            u, _, vh = torch.linalg.svd(x[fit].T @ y[fit], full_matrices=False)
            mapped = x[test] @ (u @ vh)
            scale = (mapped * y[test]).sum() / (mapped * mapped).sum()  # the best scale, fitted on nothing else
            prediction = mapped * scale
        else:
            prediction = x[test] @ torch.linalg.lstsq(x[fit], y[fit]).solution
        scores.append(1 - ((prediction - y[test]) ** 2).sum().item() / (y[test] ** 2).sum().item())
    return sum(scores) / len(scores)


def similarity_agreement(source: torch.Tensor, target: torch.Tensor) -> float:
    """Correlation of the two tables' token-to-token cosine similarities (off the diagonal): whether the LLMs agree
    on which shared tokens are alike, whatever their widths. 1: the same geometry; 0: unrelated."""

    def cosines(e):
        e = torch.nn.functional.normalize(e.double(), dim=-1)
        similar = e @ e.T
        return similar[~torch.eye(len(e), dtype=torch.bool)]

    return torch.corrcoef(torch.stack([cosines(source), cosines(target)]))[0, 1].item()


def coefficient_statistics(coefficients: torch.Tensor, e1: torch.Tensor, e2: torch.Tensor) -> dict:
    """Statistics of the coefficients [N, T] of a stage-1 adapter on held-out images, and how the part of them that
    LLM-1 cannot see (outside E1's column span) weighs on LLM-2's visual tokens."""
    c = coefficients.double()
    invisible = c - c @ column_space_projector(e1)
    on_llm2, from_invisible = c @ e2.double(), invisible @ e2.double()
    magnitude = c.abs()
    share = magnitude / magnitude.sum(-1, keepdim=True)
    return {
        "norm": c.norm(dim=-1).mean().item(),
        "effective_tokens": (1 / (share**2).sum(-1)).mean().item(),  # participation ratio of |c|: 1 = one token
        "top5_share": share.topk(min(5, share.shape[-1]), dim=-1).values.sum(-1).mean().item(),
        "negative_share": (c < 0).double().mean().item(),
        "invisible_share_of_c": (invisible.norm(dim=-1) / c.norm(dim=-1)).mean().item(),
        "invisible_share_on_llm2": (from_invisible.norm(dim=-1) / on_llm2.norm(dim=-1)).mean().item(),
        # How large the visual tokens are against each LLM's own words (norm over the RMS norm of its shared-token
        # embeddings): 1 = as large as a word, which is what a word-like token on either LLM would be.
        "token_scale_llm1": token_scale(c, e1),
        "token_scale_llm2": token_scale(c, e2),
    }


def token_scale(coefficients: torch.Tensor, embeddings: torch.Tensor) -> float:
    """Mean norm of the visual tokens `c @ E` over the RMS norm of E's rows (the LLM's shared words)."""
    e = embeddings.double()
    return ((coefficients.double() @ e).norm(dim=-1).mean() / e.norm(dim=-1).pow(2).mean().sqrt()).item()


def readable_words(coefficients: torch.Tensor, tokens: list[str], captions: list[str], grid: int = 3) -> dict:
    """Do the coefficients name the scene in words? Per image, the coefficients averaged over the patches of the
    object's column; an attribute is read right when, among that attribute's words in the shared vocabulary, the
    true one has the largest coefficient. This is what can carry over to another LLM, whatever its geometry."""
    from .stage1_captions import parse_caption
    from .world import COLOURS, COLUMNS, NUMBERS, SHAPES

    words = {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(NUMBERS[1:])}
    index = {token.strip(): n for n, token in enumerate(tokens)}
    per_image = coefficients.reshape(len(captions), grid, grid, -1)
    right = {attribute: 0 for attribute in words}
    for coefficients_of_image, text in zip(per_image, captions):
        truth = parse_caption(text)
        column = coefficients_of_image[:, COLUMNS.index(truth["column"])].mean(0)
        for attribute, options in words.items():
            present = [w for w in options if w in index]
            best = max(present, key=lambda w: column[index[w]].item())
            right[attribute] += best == truth[attribute]
    return {f"readable_{attribute}": count / len(captions) for attribute, count in right.items()}


def scene_words(caption: str) -> list[str]:
    """The scene table of a caption (world.scene_table's words), patch by patch: row r, column c of the 3 x 3 grid
    holds the count, colour or shape word (r = 0, 1, 2) of what stands in column c, or `none`."""
    from .stage1_captions import parse_caption
    from .world import COLUMNS

    truth = parse_caption(caption)
    column = COLUMNS.index(truth["column"])
    return [truth[attribute] if c == column else "none" for attribute in ("count", "colour", "shape") for c in range(3)]


def word_list_captions(model, processor, images: dict, captions: dict) -> dict:
    """The ideal transfer, measured: stage-1 captions when each visual token is exactly the embedding of the word its
    patch stands for in the scene table (what an adapter whose coefficients named the scene's words would give on
    any LLM that shares them). It says whether the LLM can caption from word tokens, apart from whether an adapter
    learns them; the adapter's own projector is bypassed by a forward hook, removed afterwards."""
    from .stage1_captions import caption_records, scored

    projector = model.model.multi_modal_projector
    with torch.no_grad():
        embeddings = projector.vocab_embeddings(model.get_input_embeddings())
    index = {processor.tokenizer.decode(ids).strip(): n for n, ids in enumerate(model.config.vocab_token_ids)}
    wanted = {word for caption in captions.values() for word in scene_words(caption)}
    if wanted - set(index):
        raise ValueError(f"the shared vocabulary lacks the scene words {sorted(wanted - set(index))}")
    steered = {}

    def before_batch(names):
        rows = [[index[word] for word in scene_words(captions[name])] for name in names]
        steered["tokens"] = embeddings[torch.tensor(rows)]

    hook = projector.register_forward_hook(
        lambda module, args, output: steered["tokens"].to(output.dtype).reshape(output.shape)
    )
    try:
        return scored(caption_records(model, processor, captions, images, before_batch=before_batch))
    finally:
        hook.remove()


def diagnose(
    pretrained_b: str,
    transferred_b: str,
    images: list,
    captions: list[str] | None = None,
    use_kernels: bool | None = None,
) -> dict:
    """All the measures for one run: B's stage-1 model (on LLM-1) and the same adapter transferred to LLM-2."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_langbridge.model.modeling_langbridge import hub_kernels_wanted

    source = AutoModelForImageTextToText.from_pretrained(pretrained_b, use_kernels=hub_kernels_wanted(use_kernels))
    target = AutoModelForImageTextToText.from_pretrained(transferred_b, use_kernels=hub_kernels_wanted(use_kernels))
    source, target = source.eval(), target.eval()
    processor = AutoProcessor.from_pretrained(pretrained_b)
    target_processor = AutoProcessor.from_pretrained(transferred_b)  # LLM-2's tokenizer
    with torch.no_grad():
        e1 = source.model.multi_modal_projector.vocab_embeddings(source.get_input_embeddings()).float()
        e2 = target.model.multi_modal_projector.vocab_embeddings(target.get_input_embeddings()).float()
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        features = source.model.get_vision_features(pixels)
        coefficients = source.model.multi_modal_projector.coefficients(features.reshape(-1, features.shape[-1]))
    tokens = [
        processor.tokenizer.decode([i]) if isinstance(i, int) else processor.tokenizer.decode(i)
        for i in source.config.vocab_token_ids
    ]
    readable = readable_words(coefficients, tokens, captions) if captions else {}
    if captions:
        named = {str(n): image for n, image in enumerate(images)}
        truths = {str(n): caption for n, caption in enumerate(captions)}
        readable |= {
            f"word_list_captions_{llm}": word_list_captions(model, llm_processor, named, truths)["exact"]
            for llm, model, llm_processor in (("llm1", source, processor), ("llm2", target, target_processor))
        }
    return readable | {
        "shared_tokens": e1.shape[0],
        "llm1_width": e1.shape[1],
        "llm2_width": e2.shape[1],
        "e1_rank": torch.linalg.matrix_rank(e1.double()).item(),
        "e2_rank": torch.linalg.matrix_rank(e2.double()).item(),
        "linear_fit_r2": held_out_fit(e1, e2, orthogonal=False),
        "orthogonal_fit_r2": held_out_fit(e1, e2, orthogonal=True),
        "similarity_agreement": similarity_agreement(e1, e2),
        **coefficient_statistics(coefficients, e1, e2),
    }
