"""tokenstep's headless core: load a causal LM, step through its decoding one token at a time.

Nothing here imports Textual. Modules are imported explicitly (``decoding.session``,
``decoding.loading``...) so that the light ones (settings, errors) never pull in torch.
"""
