"""Resizing a decoded frame as the model's upstream does, pixel for pixel (torch-free).

The upstreams convert the full-resolution frame to RGB first and resize that, each with its own
kernel; resizing inside FFmpeg's converter straight from YUV 4:2:0 (which antialiases, and
interpolates chroma its own way) gave frames 1-3 levels off on average and up to 104 on 720p
footage. So :mod:`jedi_deploy.media.decode` converts every sampled frame at full resolution,
turns it upright, and hands it here, where ``spec.rules`` picks the upstream's kernel
(:func:`resize_kernel` names it; the model card records it):

* ``mmaction2``: ``mmcv.imresize``'s ``bilinear``, i.e. OpenCV ``cv2.resize(..., INTER_LINEAR)`` on
  uint8 - the upstream's own kernel (opencv-python-headless), no antialiasing;
* ``torchvision``: the video weights' ``VideoClassification`` transform -
  ``F.resize(uint8 video, antialias=False)``: ``torch.nn.functional.interpolate(bilinear,
  align_corners=False)`` in float32, then rounded half to even into uint8 - written here in numpy
  (same index arithmetic, same float32 operations in the same order), so serving needs no torch;
* ``transformers``: the image processor's ``resize``: Pillow's ``Image.resize`` with the
  processor's ``resample`` (``spec.resample``; Pillow antialiases when it shrinks), as the
  processors do.

tests/media/test_resize.py measures each against the upstream's own code.
"""
from __future__ import annotations

import numpy as np

from jedi_deploy.contracts.preprocess import RESAMPLE, Preprocess, resize_shape


def resize_kernel(spec: Preprocess) -> str:
    """The kernel that resizes frames for ``spec`` (what the model card and /v1/models report)."""
    if spec.rules == "mmaction2":
        return "cv2.resize INTER_LINEAR on uint8 RGB (mmcv.imresize bilinear)"
    if spec.rules == "torchvision":
        return "bilinear, align_corners=False, antialias=False, float32 then round (torchvision F.resize)"
    return f"Pillow Image.resize {spec.resample} (antialiased when shrinking; transformers image processors)"


def resize_frame(img: np.ndarray, spec: Preprocess | None) -> np.ndarray:
    """An upright full-resolution ``uint8[H, W, 3]`` frame resized as ``spec`` says (None: kept)."""
    if spec is None:
        return img
    h, w = img.shape[:2]
    th, tw = resize_shape(h, w, spec)
    if (th, tw) == (h, w):
        return img
    if spec.rules == "mmaction2":
        import cv2

        return cv2.resize(np.ascontiguousarray(img), (tw, th), interpolation=cv2.INTER_LINEAR)
    if spec.rules == "torchvision":
        return bilinear_like_torch(img, th, tw)
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((tw, th), resample=RESAMPLE.index(spec.resample),
                                                                        reducing_gap=None))


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's linear source taps (``area_pixel_compute_source_index``, align_corners=False): the
    two input indices and their float32 weights for every output index."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, (np.float32(1) - l1).astype(np.float32), l1


def bilinear_like_torch(img: np.ndarray, th: int, tw: int) -> np.ndarray:
    """``uint8[th, tw, C]``: ``interpolate(img.float(), (th, tw), mode="bilinear",
    align_corners=False, antialias=False).round().to(uint8)`` without torch."""
    x = img.astype(np.float32)
    h0, h1, hl0, hl1 = _taps(img.shape[0], th)
    w0, w1, wl0, wl1 = _taps(img.shape[1], tw)
    wl0, wl1 = wl0[None, :, None], wl1[None, :, None]
    top = wl0 * x[h0][:, w0] + wl1 * x[h0][:, w1]
    bottom = wl0 * x[h1][:, w0] + wl1 * x[h1][:, w1]
    out = hl0[:, None, None] * top + hl1[:, None, None] * bottom
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
