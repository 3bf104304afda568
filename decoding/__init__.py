"""tokenstep's headless core: load a causal LM, step through its decoding one token at a time.

Nothing here imports Textual. Modules are imported explicitly (``decoding.search.session``,
``decoding.engines.registry``...) so that the light ones (settings, errors) never pull in torch.
"""

import os

# OpenMP threads (torch's and llama.cpp's) that spin while they wait collapse when another process takes
# a core: on 2 cores a step ran 2-3x slower than with one thread. Waiting passively keeps them near
# their best either way (`python benchmarks/run.py threads`). Set before torch is imported, hence here;
# a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
