"""What a language model computes for preference training and evaluation.

    logprobs.py     summed response log-probs: plain, packed, shared-prompt, chunked LM head
    attention.py    packed rows' FlexAttention block mask (train.attention=flex), the dense mask's rule per pair
    token_kl.py     exact per-token KL(πθ‖πref) over the vocabulary, chunked, for the kl loss term
    reference.py    πref: a frozen copy, the adapter switched off, or log-probs precomputed once and cached
    sampling.py     batched, seeded, KV-cached completions (exactly the model's distribution at temperature 1)
    sequence_kl.py  sequence KL(π‖πref) of sampled completions, summed exact per-token KLs
"""
