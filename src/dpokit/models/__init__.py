"""Models: loading weights the safe way, LoRA, heads, tiny test models, and the one loader for sampling.

    compiling.py regional torch.compile: each transformer block compiled once for all layers (train.compile)
    loading.py   causal LMs and reward heads from safetensors or GGUF, tokenizers with a pad token, LoRA adapters
    sampling.py  `load_for_sampling` and `use_chat`: the model on its device and the one chat-template rule
    tiny.py      tiny Llama models and BPE tokenizers built from configs (tests, the demo)
"""
