"""Checkpoints on disk: save and load with ties, and check them before loading.

One module per piece; importing this package imports nothing else (torch is
imported by the modules that need it, when they need it):

- :mod:`._format`: which format a file is; the metadata key :func:`weightshare.save`
  writes; the one-line error type :class:`._format.Unreadable`.
- :mod:`._contents`: what a reader hands to the rules (entries, recorded ties, byte
  access) and the rule for "stored once" (identical bytes), shared by
  :func:`weightshare.check` and :func:`weightshare.load`.
- :mod:`._safetensors`: the safetensors header, validated as ``safe_open`` does;
  :mod:`._mapped`: its tensor bytes through ``mmap`` (no torch).
- :mod:`._torch`: torch checkpoints (``torch.load(weights_only=True)``).
- :mod:`._onnx`: ONNX models, read by ``onnx`` (imported only then), and the
  search for initializers stored transposed; :mod:`._gguf`: GGUF files, read by
  ``gguf``'s ``GGUFReader``, and which architectures fall back to the embedding.
- :mod:`._hf`: a Hugging Face folder's config and weight files, and the ties it
  declares; :mod:`._transformers`: the same asked of transformers (meta-device
  model, transformers' own key renaming, never the folder's custom code).
- :mod:`._rules`: the finding rules. **A new finding goes there**: one function
  that returns :class:`weightshare.Finding` objects, called from
  ``_rules.findings``, and its kind listed in ``Finding``'s docstring; those
  that apply to exported files only (ONNX, GGUF) are in :mod:`._rules_export`.
- :mod:`._report`: :class:`weightshare.CheckReport` and its parts, text and JSON.
- :mod:`._check`: :func:`weightshare.check`, which reads the input and applies
  the rules; :mod:`._cli`: the ``weightshare check`` command line.
- :mod:`._saveload`: :func:`weightshare.save`, :func:`weightshare.load` and
  :func:`weightshare.checkpoint_groups`.
"""
