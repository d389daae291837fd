"""`fada generate`: generate a talking-portrait video from a portrait image and speech."""

from __future__ import annotations

from pipelines.errors import NotImplementedYetError


def command() -> None:
    """Generate a talking-portrait video from a portrait image and speech.

    Example:

        fada generate --checkpoint runs/teacher --image face.png --audio speech.wav -o out.mp4
    """
    raise NotImplementedYetError("`fada generate` is not implemented yet in this release; see CHANGELOG.md for what is.")
