"""Repetition guard for OCR-style generation: a windowed n-gram ban.

DeepSeek-OCR's best-known failure is an endless loop (the same line or table row written again and again). Its own
`infer()` generates with `no_repeat_ngram_size=20` over the whole sequence; vLLM's DeepSeek-OCR recipe adds a
windowed guard instead (n-gram 30 inside the last 90 tokens, table-cell tokens exempt), which stops loops without
forbidding a phrase that legitimately comes back pages later. `NGramRepetitionGuard` is that windowed guard as a
transformers `LogitsProcessor`:

    model.generate(**inputs, repetition_guard=True)                              # n=30, window=90
    model.generate(**inputs, repetition_guard={"ngram_size": 20, "window_size": 60, "exempt_token_ids": [7]})
    model.generate(**inputs, logits_processor=[NGramRepetitionGuard(30, 90)])    # plain transformers

Remote code: copied into every checkpoint (modeling_deepsynth.py imports it); only torch and transformers.
"""

import torch
from transformers import LogitsProcessor

DEFAULT_NGRAM_SIZE = 30
DEFAULT_WINDOW_SIZE = 90
# Table cells repeat by nature (`<td></td><td></td>...`): their tokens are never banned.
EXEMPT_TOKENS = ("<td>", "</td>")


class NGramRepetitionGuard(LogitsProcessor):
    """Ban every token that would complete an `ngram_size`-gram already present in the last `window_size` tokens
    of the sequence; `exempt_token_ids` are never banned.

    scores: (B, V) next-token scores; input_ids: (B, L) the sequence so far (prompt included).
    """

    def __init__(
        self,
        ngram_size: int = DEFAULT_NGRAM_SIZE,
        window_size: int = DEFAULT_WINDOW_SIZE,
        exempt_token_ids=(),
    ):
        for name, value in (("ngram_size", ngram_size), ("window_size", window_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if window_size < ngram_size:
            raise ValueError(f"window_size ({window_size}) must be >= ngram_size ({ngram_size})")
        self.ngram_size, self.window_size = ngram_size, window_size
        self.exempt_token_ids = sorted({int(t) for t in exempt_token_ids})

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.ngram_size
        if input_ids.shape[1] < n:
            return scores
        window = input_ids[:, -self.window_size :]  # (B, W)
        ngrams = window.unfold(1, n, 1)  # (B, W - n + 1, n): every n-gram that ends inside the window
        current = input_ids[:, input_ids.shape[1] - (n - 1) :]  # (B, n - 1): what the next token would extend
        repeats = (ngrams[:, :, :-1] == current[:, None]).all(-1)  # (B, W - n + 1)
        banned = torch.zeros_like(scores, dtype=torch.int32)
        banned.scatter_add_(1, ngrams[:, :, -1], repeats.to(torch.int32))  # duplicates add up, never overwrite
        if self.exempt_token_ids:
            banned[:, self.exempt_token_ids] = 0
        return scores.masked_fill(banned > 0, -float("inf"))


def exempt_token_ids(tokenizer) -> list[int]:
    """Ids of `<td>` / `</td>` where the tokenizer has them as single tokens (DeepSeek-OCR's tokenizer does)."""
    ids = []
    for token in EXEMPT_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.append(token_id)
    return ids


def repetition_guard(spec, tokenizer=None) -> LogitsProcessor | None:
    """The guard a `repetition_guard=` argument asks for: None / False: none; True: the defaults (n-gram 30 in a
    90-token window); a dict of NGramRepetitionGuard arguments; or a guard, used as it is. With a `tokenizer`, its
    `<td>` / `</td>` are exempt unless the dict names `exempt_token_ids`."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, LogitsProcessor):  # a guard (possibly from another copy of this remote module)
        return spec
    if spec is True:
        spec = {}
    if not isinstance(spec, dict):
        raise ValueError(f"repetition_guard must be a bool, a dict or an NGramRepetitionGuard, got {spec!r}")
    unknown = set(spec) - {"ngram_size", "window_size", "exempt_token_ids"}
    if unknown:
        raise ValueError(f"repetition_guard: unknown settings {sorted(unknown)}")
    exempt = exempt_token_ids(tokenizer) if tokenizer is not None else ()
    return NGramRepetitionGuard(**{"exempt_token_ids": exempt, **spec})


def resolve_guard_kwarg(generate_kwargs: dict, tokenizer) -> dict:
    """generate() kwargs with a `repetition_guard=True` / dict turned into a guard that exempts the tokenizer's
    table-cell tokens (for callers that hold the tokenizer: infer(), the pipeline, the engine)."""
    spec = generate_kwargs.get("repetition_guard")
    if spec is True or isinstance(spec, dict):
        return {**generate_kwargs, "repetition_guard": repetition_guard(spec, tokenizer)}
    return generate_kwargs


__all__ = ["NGramRepetitionGuard", "exempt_token_ids", "repetition_guard", "resolve_guard_kwarg"]
