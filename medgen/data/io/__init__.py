"""Reading, checking and writing images: 2D pictures, medical volumes, label maps, HU windows.

One package, one module per kind (every public name is re-exported here, so
``from medgen.data.io import read_volume`` works as it always has):

* :mod:`~medgen.data.io.images` -- :func:`read_image`: a 2D PNG / TIFF / JPEG / ``.npy`` picture as
  float32 ``[H, W]`` in ``[0, 1]``; :func:`validate_array`, :func:`to_model_range` (``[1, 1, h, w]``
  in ``[-1, 1]``), :func:`from_model_range`, :func:`write_image`.
* :mod:`~medgen.data.io.volumes` -- :func:`read_volume`: NIfTI, DICOM (file or folder), ``.npy`` or
  a picture as a :class:`Volume` in *physical units* (float32 ``[D, H, W]`` or ``[H, W]``, spacing
  in mm, affine, unit); :func:`write_volume` (NIfTI).
* :mod:`~medgen.data.io.dicom` -- the DICOM reader behind :func:`read_volume` (HU, a.u. or [0, 1]
  by modality; spacing and affine from the header).
* :mod:`~medgen.data.io.labels` -- :func:`write_labels` / :func:`read_labels`: integer label maps
  as 8/16-bit PNG or int16 NIfTI.
* :mod:`~medgen.data.io.windows` -- :data:`WINDOWS` ``(width, level)`` presets in HU and
  :func:`window` (HU -> [0, 1], clipped).
* :mod:`~medgen.data.io.sample_input` -- :func:`read_sample_input`: one ``[H, W]`` image in [0, 1]
  from any of the above (the middle sagittal slice of a volume, in the phantoms' view);
  :func:`read_sample_stack`: ``[K, H, W]`` for a source of ``K`` channels (``K`` files or one ``.npy``).
* :mod:`~medgen.data.io.common` -- what they share: :class:`ImageReadError` (a ``ValueError``
  whose message is one line naming the file and the problem), :class:`ImageConversionWarning`,
  :class:`Volume`, the size limits and extensions, and :func:`atomic_path`.

Conversions that change the data produce a one-line *note*: pass ``notes=[]`` to collect them,
otherwise each is issued as an :class:`ImageConversionWarning`. Writers write a temporary file
in the target folder and :func:`os.replace` it, so no reader ever sees half a file.
"""
from medgen.data.io.common import (DICOM_SUFFIXES, MAX_BYTES, MAX_PIXELS, MAX_VOLUME_BYTES, MAX_VOXELS,
                                   NIFTI_SUFFIXES, NPY_SUFFIXES, PIL_SUFFIXES, SUFFIXES, UNITS, VOLUME_SUFFIXES,
                                   ImageConversionWarning, ImageReadError, Volume, atomic_path)
from medgen.data.io.images import from_model_range, read_image, to_model_range, validate_array, write_image
from medgen.data.io.labels import read_labels, write_labels
from medgen.data.io.sample_input import PLANES, read_sample_input, read_sample_stack, sagittal_view
from medgen.data.io.volumes import read_volume, write_volume
from medgen.data.io.windows import WINDOWS, window

__all__ = [
    "ImageReadError", "ImageConversionWarning", "Volume", "atomic_path",
    "read_image", "validate_array", "to_model_range", "from_model_range", "write_image",
    "read_volume", "write_volume", "read_labels", "write_labels", "WINDOWS", "window",
    "read_sample_input", "read_sample_stack", "sagittal_view", "PLANES",
    "MAX_PIXELS", "MAX_BYTES", "MAX_VOXELS", "MAX_VOLUME_BYTES", "UNITS",
    "SUFFIXES", "PIL_SUFFIXES", "NPY_SUFFIXES", "NIFTI_SUFFIXES", "DICOM_SUFFIXES", "VOLUME_SUFFIXES",
]
