"""Task apps built on the monai-kdml core, as MONAI keeps ``monai.apps.detection`` and ``monai.apps.pathology``.

- :mod:`monai_kdml.apps.msi`: MSI vs MSS tile classification (Kather et al. layouts, demo tiles, patient metrics).
- :mod:`monai_kdml.apps.polyp`: polyp detection (Kvasir-SEG and generic frames, RetinaNet teachers and students).

The core (``keys``, ``losses``, ``engines``, ``networks``, ``handlers``, ``metrics``, ``data``) never imports an app.
"""
