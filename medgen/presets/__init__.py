"""Named presets of the paper tasks, one module per paper; imported lazily by :mod:`medgen.config`.

Each module calls :func:`medgen.config.register_presets` for its tasks (``ci``, ``smoke``,
``cpu``, ``paper``) when imported. :data:`medgen.config.PRESET_MODULES` lists them;
``get_preset`` and ``tasks`` import them by name on first use, so
``medgen train --task mri_to_ct/ddim_image`` works without the caller importing anything.
This package imports nothing (in particular not :mod:`medgen.config`, which imports it).
"""
