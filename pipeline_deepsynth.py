"""`pipeline("document-instruction")`: a document and an instruction in, `{"answer", "score"}` out.

    from transformers import pipeline
    pipe = pipeline(model="path/to/checkpoint", trust_remote_code=True)
    pipe(document="Q3 revenue was $45M ...", instruction="What was the revenue?", max_new_tokens=64)
    pipe(document=[doc1, doc2], instruction=[q1, q2], batch_size=2)      # one padded generate() per batch

`document` is anything the DeepSynth processor reads: text, a file path (.txt/.md, image, .pdf), PDF or image bytes,
a PIL image, or a list of those as the pages of one document. Generation kwargs (max_new_tokens, do_sample,
temperature, top_p, ..., `repetition_guard=True`: the windowed n-gram guard) go to `generate()`.

Structured extraction: `pipe(document=..., instruction=..., schema={...JSON Schema...})` (or `fields=["revenue",
"growth"]`: required string fields) constrains decoding to JSON valid under the schema (xgrammar; see
structured_deepsynth.py) and adds the parsed object: {"answer": raw text, "score", "json": object or None,
"field_confidence": {field: confidence}, "json_error": None or why there is no object (out of tokens)}.

`score` is the answer's confidence: the geometric mean of the probabilities of the generated tokens (the end-of-
sequence token included) under the distribution generate() picked each of them from, i.e. after its logits
processors (suppressed placeholder ids, temperature, top-k/top-p). See `generate_with_scores`.

Remote code: saved next to the model by `save_with_pipeline`, which writes `custom_pipelines` into config.json, so
that `pipeline(model=DIR, trust_remote_code=True)` picks this task in a fresh process. The DeepSynth application
(`deepsynth.inference`) calls the same two functions, `generate_with_scores` and `decode_answers`.
"""

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForImageTextToText, GenerationConfig, LogitsProcessorList, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

try:
    from .generation_deepsynth import resolve_guard_kwarg
    from .modeling_deepsynth import DeepSynthForConditionalGeneration
    from .processing_deepsynth import DeepSynthProcessor
except ImportError:  # imported from the repo root rather than as remote code
    from generation_deepsynth import resolve_guard_kwarg
    from modeling_deepsynth import DeepSynthForConditionalGeneration
    from processing_deepsynth import DeepSynthProcessor

TASK = "document-instruction"
DEFAULT_MAX_NEW_TOKENS = 256


@torch.no_grad()
def generate_with_scores(model, inputs: dict, **generate_kwargs) -> dict[str, torch.Tensor]:
    """Run `model.generate(**inputs)` and score what it wrote.

    inputs: a left-padded prompt batch (processor output, or with `image_features` / a pre-filled `cache`).
    Returns {"tokens": (B, T) new token ids (padding after a row ended), "lengths": (B,) tokens each row generated,
    its end-of-sequence token included, "scores": (B,) confidence, "logprobs": (B, T) log p of each token}.

    confidence = exp(mean over the row's generated tokens of log p(token)), with p the softmax of the scores
    generate() chose the token from (`compute_transition_scores(..., normalize_logits=True)`; with beam search, those
    of the beam each token came from).
    """
    if generate_kwargs.get("num_return_sequences", model.generation_config.num_return_sequences or 1) != 1:
        raise ValueError("one answer per request: num_return_sequences must be 1 (call model.generate for several)")
    prompt_length = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, **generate_kwargs, return_dict_in_generate=True, output_scores=True)
    tokens = out.sequences[:, prompt_length:]
    # Beam search: `beam_indices` picks the beam each token came from; its scores are log-probabilities with the
    # suppressed ids set to -inf afterwards, so normalising again renormalises over the allowed tokens, as for greedy.
    beam_indices = getattr(out, "beam_indices", None)
    logprobs = model.compute_transition_scores(out.sequences, out.scores, beam_indices, normalize_logits=True)  # (B, T)

    eos = generate_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    eos = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), device=tokens.device)
    steps = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    # A row ends at its first eos; what generate() writes after that is padding, not part of the answer.
    ended = torch.isin(tokens, eos)
    first_eos = torch.where(ended, steps, tokens.shape[1]).min(dim=1).values
    lengths = torch.clamp(first_eos + 1, max=tokens.shape[1])
    valid = steps < lengths.unsqueeze(1)
    mean_logprob = (logprobs.float() * valid).sum(1) / lengths.clamp(min=1)
    return {"tokens": tokens, "lengths": lengths, "scores": mean_logprob.exp(), "logprobs": logprobs.float()}


def build_json_constraint(model, tokenizer, schema=None, fields=None):
    """The JsonConstraint for a request's `schema` (JSON Schema dict or text) or `fields` (names), or None when
    neither is given. ValueError on a bad schema, both given, or a schema the tokenizer cannot write."""
    if schema is None and fields is None:
        return None
    if schema is not None and fields is not None:
        raise ValueError("pass either schema or fields, not both")
    try:  # lazily: xgrammar and jsonschema are needed only for structured requests
        from .structured_deepsynth import JsonConstraint, schema_from_fields
    except ImportError:
        from structured_deepsynth import JsonConstraint, schema_from_fields
    if fields is not None:
        schema = schema_from_fields(fields)
    vocab_size = model.get_output_embeddings().weight.shape[0]
    return JsonConstraint(tokenizer, schema, vocab_size=vocab_size, stop_token_ids=model.generation_config.eos_token_id)


def constrained_kwargs(model, constraint, generate_kwargs: dict) -> dict:
    """generate() kwargs with the constraint's logits processor appended (a fresh one: it serves one call)."""
    if generate_kwargs.get("num_beams", model.generation_config.num_beams or 1) > 1:
        raise ValueError("schema-constrained generation runs greedy or sampling: num_beams must be 1")
    processors = [*generate_kwargs.get("logits_processor", []), constraint.logits_processor()]
    return {**generate_kwargs, "logits_processor": LogitsProcessorList(processors)}


def decode_json(constraint, outputs: dict[str, torch.Tensor]) -> list[dict]:
    """`generate_with_scores` output of a constrained call -> [{"json", "field_confidence", "json_error"}] per row."""
    return [
        constraint.parse(tokens[: int(length)].tolist(), logprobs[: int(length)].tolist())
        for tokens, length, logprobs in zip(outputs["tokens"], outputs["lengths"], outputs["logprobs"])
    ]


def decode_answers(tokenizer, outputs: dict[str, torch.Tensor]) -> list[dict]:
    """`generate_with_scores` output -> [{"answer", "score", "tokens_generated"}] per row (answers stripped)."""
    results = []
    for tokens, length, score in zip(outputs["tokens"], outputs["lengths"], outputs["scores"]):
        answer = tokenizer.decode(tokens[: int(length)], skip_special_tokens=True).strip()
        results.append({"answer": answer, "score": float(score), "tokens_generated": int(length)})
    return results


class DocumentInstructionPipeline(Pipeline):
    """Instruction-following over a document: see the module docstring."""

    _load_processor = True  # the DeepSynth processor holds the tokenizers and the page renderer
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(f"the {TASK} pipeline needs the DeepSynth processor (processor=...)")

    def __call__(self, inputs=None, document=None, instruction=None, **kwargs):
        """pipe(document=..., instruction=...) -> {"answer", "score"}; lists of equal length (or a list of
        {"document", "instruction"} dicts as `inputs`) -> a list of those, batched by `batch_size`."""
        if inputs is None:
            if document is None or instruction is None:
                raise ValueError("pass document=... and instruction=... (or a dict / list of dicts as inputs)")
            if isinstance(instruction, (list, tuple)):
                # A list of instructions means several requests: then `document` is one document per instruction.
                if not isinstance(document, (list, tuple)) or len(document) != len(instruction):
                    raise ValueError("with a list of instructions, pass a list of as many documents")
                inputs = [{"document": d, "instruction": i} for d, i in zip(document, instruction)]
            else:  # a list `document` is the pages of one document
                inputs = {"document": document, "instruction": instruction}
        elif document is not None or instruction is not None:
            raise ValueError("pass either inputs or document=/instruction=, not both")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, mode=None, max_new_tokens=None, generate_kwargs=None, schema=None, fields=None,
                             **kwargs):
        preprocess = {} if mode is None else {"mode": mode}
        # Everything else is a generation parameter; generate() rejects what it does not know.
        generate = {**(generate_kwargs or {}), **kwargs}
        if max_new_tokens is not None:
            generate["max_new_tokens"] = max_new_tokens
        forward, postprocess = ({"generate_kwargs": generate} if generate else {}), {}
        constraint = build_json_constraint(self.model, self.processor.tokenizer, schema, fields)
        if constraint is not None:
            forward["constraint"] = postprocess["constraint"] = constraint
        return preprocess, forward, postprocess

    def preprocess(self, inputs, mode=None):
        if not isinstance(inputs, dict) or "document" not in inputs or "instruction" not in inputs:
            raise ValueError(f"each input must be a dict with 'document' and 'instruction', got {type(inputs).__name__}")
        # Un-batched example (lists); `_forward` or the DataLoader's collate pads it into a batch.
        return self.processor(document=inputs["document"], instruction=inputs["instruction"], mode=mode)

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        # The generic pad_collate_fn knows nothing about pages: let the processor pad the examples into one batch.
        dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self.processor.collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _forward(self, model_inputs, generate_kwargs=None, constraint=None):
        if not torch.is_tensor(model_inputs["input_ids"]):  # a single example from `preprocess`
            model_inputs = self._ensure_tensor_on_device(self.processor.collate([model_inputs]), self.device)
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {})
        generate_kwargs = resolve_guard_kwarg(generate_kwargs, self.processor.tokenizer)  # repetition_guard=True
        if constraint is not None:
            generate_kwargs = constrained_kwargs(self.model, constraint, generate_kwargs)
        return generate_with_scores(self.model, dict(model_inputs), **generate_kwargs)

    def postprocess(self, model_outputs, constraint=None):
        result = decode_answers(self.processor.tokenizer, model_outputs)[0]
        answer = {"answer": result["answer"], "score": result["score"]}
        if constraint is not None:
            answer.update(decode_json(constraint, model_outputs)[0])
        return answer

    def save_pretrained(self, save_directory, **kwargs):
        # Pipeline.save_pretrained writes `custom_pipelines` into the config, copies this file and saves the model.
        # It would also save the tokenizer and image processor on their own (a stray preprocessor_config.json):
        # the DeepSynth processor saves them, the instruction tokenizer and the font together instead.
        parts = self.tokenizer, self.image_processor
        self.tokenizer = self.image_processor = None
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.tokenizer, self.image_processor = parts
        self.processor.save_pretrained(save_directory)


# `pt` names a transformers class on reload (`getattr(transformers, name)`): the Auto class, whose auto_map in
# config.json points at DeepSynthForConditionalGeneration.
PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=DocumentInstructionPipeline, pt_model=AutoModelForImageTextToText)


def declare_pipeline(config) -> None:
    """Name this pipeline in `config.custom_pipelines` (what `Pipeline.save_pretrained` writes). Every later save of
    the model then declares it, Trainer checkpoints included; `DeepSynthPreTrainedModel.save_pretrained` copies
    this file beside the weights whenever the entry is set."""
    config.custom_pipelines = {
        TASK: {"impl": f"pipeline_deepsynth.{DocumentInstructionPipeline.__name__}", "pt": ("AutoModelForImageTextToText",)}
    }


def save_with_pipeline(model: DeepSynthForConditionalGeneration, processor: DeepSynthProcessor, out_dir) -> None:
    """Save model + processor + remote code, with config.json's `custom_pipelines` naming this pipeline, so that
    `pipeline(model=out_dir, trust_remote_code=True)` works in a fresh process."""
    declare_pipeline(model.config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


__all__ = [
    "DocumentInstructionPipeline",
    "build_json_constraint",
    "constrained_kwargs",
    "decode_answers",
    "decode_json",
    "declare_pipeline",
    "generate_with_scores",
    "save_with_pipeline",
    "TASK",
]
