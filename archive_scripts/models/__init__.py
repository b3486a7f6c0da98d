"""Your own models' specs: one module per model, each declaring ``SPEC = ArchiveSpec(...)``.

``python -m archive_scripts new NAME --like classifier|price|similar|json`` writes one; docs/adding-a-model.md.
"""
