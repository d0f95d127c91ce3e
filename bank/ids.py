"""Content-addressed demonstration ids: the same image bytes and text always get the same id."""

import hashlib

ID_HEX_CHARS = 32  # 128 bits: collisions are not a practical concern


def demonstration_id(image: bytes, text: str) -> str:
    h = hashlib.sha256()
    # Length-prefix the image so (image, text) boundaries cannot be shifted into a collision.
    h.update(len(image).to_bytes(8, "little"))
    h.update(image)
    h.update(text.encode("utf-8"))
    return h.hexdigest()[:ID_HEX_CHARS]
