"""vLLM plugin for DeepSynth checkpoints (entry point group `vllm.general_plugins`).

`register()` runs in every vLLM process before a model is loaded: it maps config.json's model_type "deepsynth" to
a config class that needs no remote code, the architecture `DeepSynthForConditionalGeneration` to the plugin's
model, and gives the chat server a template (the user message's text is the instruction, its images the pages).
"""

from pathlib import Path

CHAT_TEMPLATE = Path(__file__).with_name("chat_template.jinja")
ARCHITECTURE = "DeepSynthForConditionalGeneration"


def register():
    from vllm import ModelRegistry
    from vllm.transformers_utils.chat_templates.registry import register_chat_template_fallback_path
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    from .config import DeepSynthVllmConfig

    _CONFIG_REGISTRY["deepsynth"] = DeepSynthVllmConfig
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "deepsynth_vllm.model:DeepSynthForConditionalGeneration")
    register_chat_template_fallback_path("deepsynth", CHAT_TEMPLATE)
