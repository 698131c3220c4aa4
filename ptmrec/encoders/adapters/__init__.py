"""Parameter-efficient adapters inside the encoders' towers, by name.

    from ptmrec.encoders import build_encoder
    from ptmrec.encoders.adapters import adapter_options, apply_adapter, adapter_state_dict

    encoder = apply_adapter(build_encoder("bundled"), "prompt", **adapter_options(cfg.stage2.adapter))
    features = encoder.encode_text(**encoder.tokenize(texts))   # now through the prompts
    state = adapter_state_dict(encoder)                          # what trained, nothing else

Adapters: ``prompt`` (deep prompts in transformer towers, a learnable image border for the CNN),
the peft methods (``lora``, ``dora``, ``ia3``, ``loha``, ``lokr``, ``vera``, ``oft``, ``boft``,
``hra``), ``full`` and ``none``. Importing this package does not import peft; building does.
"""

from ptmrec.encoders.adapters.registry import (
    ADAPTERS,
    adapter_options,
    adapter_state_dict,
    adapter_takes,
    apply_adapter,
    available_adapters,
    count_parameters,
    load_adapter_state,
    register_adapter,
    set_train_mode,
)

# Importing the built-in adapters registers them.
from ptmrec.encoders.adapters import baselines, peft_adapters, prompt_tuning  # noqa: E402,F401  isort: skip

__all__ = [
    "ADAPTERS",
    "adapter_options",
    "adapter_state_dict",
    "adapter_takes",
    "apply_adapter",
    "available_adapters",
    "count_parameters",
    "load_adapter_state",
    "register_adapter",
]
