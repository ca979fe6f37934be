"""Record the parity tests' reference goldens by running the official Ideogram 4 reference.

One module per golden file; ``python -m tools.record_goldens`` records them (see ``__main__``):

    python -m tools.record_goldens --reference /path/to/ideogram4/src --out-dir tests/data/families/<name>

``--reference`` is a local checkout of github:RyukoMatoiFan/ideogram4 that you supply (its ``src/``
directory, or the checkout root holding it); nothing is downloaded and no reference code lives here.
One reference serves all five files: commit 9c167a2 reproduces the DiT and VAE-decoder goldens first
recorded with 415abf4 bit for bit (every tensor), and the VAE-encoder golden needs ``train_edit.py``,
which 415abf4 lacks.  The metadata's ``reference`` entry names the commit that was passed (read with
``git rev-parse HEAD`` from a git checkout, else given with ``--reference-id``).

Modules (recipes in their docstrings and the tests'):

* ``dit`` -> ``dit_golden.safetensors`` (tests/test_dit_parity.py)
* ``text_encoder`` -> ``te_golden.safetensors`` (tests/test_text_encoder.py)
* ``text_encoder_packed`` -> ``te_packed_golden.safetensors`` (tests/test_text_encoder_packed.py)
* ``vae`` -> ``vae_golden.safetensors`` (tests/test_vae.py)
* ``vae_encoder`` -> ``vae_encoder_golden.safetensors`` (tests/test_vae_encoder.py)
* ``common``: reference checkout, dependency check, machine description, saving
"""
