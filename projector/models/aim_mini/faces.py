"""Whether a photo shows a person's face: OpenCV's Haar cascade face detector.

ImageNet-1k has no class for a person, so the classifier that names everything else in aim-mini's
caption calls a portrait a "bobsleigh" or an "academic gown". People are among the commonest subjects
of a photo; a face detector that ships with OpenCV (Viola-Jones, trained by OpenCV on faces, not on
anything here) fills that gap. Measured on the held-out photos and 300 easy-VQA training images at the
processor's 224 px crop (``projector/models/aim_mini/README.md``): a face in all 6 variants of the two
portraits, none in the 24 variants of the other photos nor in any easy-VQA image.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import torch

CASCADE = "haarcascade_frontalface_alt2.xml"  # fewer false detections than _default on the photos
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_FACE_FRACTION = 0.09  # of the image side: ~20 px at 224, a face that matters to the picture
# cv2's detectMultiScale is not documented as thread-safe on one classifier; detection is milliseconds.
_lock = threading.Lock()


@functools.cache
def _cascade():
    import cv2

    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if classifier.empty():
        raise RuntimeError(
            f"OpenCV could not load {CASCADE} (opencv-python-headless 4.x ships it; 5.x does not)"
        )
    return classifier


def has_face(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> [B] bool: whether a frontal face of at least
    ``MIN_FACE_FRACTION`` of the image side is found."""
    import cv2

    classifier = _cascade()
    found = []
    rgb = (
        (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )
    for image in rgb:
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
        side = max(1, round(MIN_FACE_FRACTION * min(grey.shape)))
        with _lock:
            faces = classifier.detectMultiScale(
                grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(side, side)
            )
        found.append(len(faces) > 0)
    return torch.tensor(found, dtype=torch.bool, device=pixels.device)
