"""The one error type raised for bad COCO keypoint files."""

from __future__ import annotations


class CocoFormatError(ValueError):
    """A COCO keypoint file is malformed or inconsistent.

    The message names the file and, where it applies, the image id, annotation id or category id at fault
    and what is wrong with it.
    """
