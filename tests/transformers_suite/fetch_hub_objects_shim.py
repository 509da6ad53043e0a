"""Stand-in for transformers' repository-level `utils/fetch_hub_objects_for_ci.py`, which the PyPI sdist does not
ship. `test_processing_common` maps its fixture URLs through `url_to_local_path` at import time; the real helper
points them at files downloaded beforehand. Here an image URL maps to a small random PNG written locally (no network
is reached), and any other URL (videos, audio: ArrCoc reads neither) is returned unchanged.
"""

import os
import tempfile

IS_STAND_IN = True
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def url_to_local_path(url, return_url_if_not_found=True):
    if not str(url).lower().endswith(IMAGE_SUFFIXES):
        return url
    import numpy as np
    from PIL import Image

    folder = os.path.join(tempfile.gettempdir(), "transformers_tests_fixtures")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(str(url)).rsplit(".", 1)[0] + ".png")
    if not os.path.exists(path):
        pixels = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        tmp = f"{path}.{os.getpid()}.tmp"
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, path)
    return path
