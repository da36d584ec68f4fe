"""Readers by format: what every data source (`data=synthetic|files|tfds`) offers a task.

A task's yaml names the format it reads (`reader: labelled_text`); `Source.read(format)`
returns that format's raw `Splits`. A task never asks a source for "its" data by the task's
name, so a new task reuses the formats that exist, and a new format is one method on the
sources that can provide it (and one line in `FORMATS`). No TensorFlow here.
"""
from __future__ import annotations

from pipelines.data.splits import Splits

# format -> what its Splits hold (inputs -> targets), for error messages and docs.
FORMATS: dict[str, str] = {
    "labelled_text": "texts (str) -> labels (str)",
    "parallel_text": "source sentences (str) -> target sentences (str)",
    "conll": "token lists -> IOB2 tag lists (CoNLL columns)",
    "labelled_images": "images (uint8 (H, W, 3) or encoded bytes) -> label names",
    "image_masks": "images -> masks of class indices (uint8 (H, W))",
    "image_captions": "images -> lists of reference captions",
    "image_questions": "images -> lists of (question, answer) pairs",
    "labelled_scenes": "images -> every target of the scene: {label, mask, captions}",
    "text_lines": "texts (str, one per line) -> document ids (int; blank lines separate documents)",
}


class Source:
    """Base of the data sources: `read(format)` dispatches to the method of that name.

    Subclasses implement the formats they can provide; `ignore_index` (segmentation's
    label left out of loss and metrics) is a property of the data, so the source carries it.
    """

    name = "source"
    ignore_index: int | None = None

    def formats(self) -> list[str]:
        """The formats this source provides."""
        return [name for name in FORMATS if callable(getattr(type(self), name, None))]

    def read(self, format: str) -> Splits:
        if format not in FORMATS:
            raise ValueError(f"task.reader={format!r} is not a data format; formats: "
                             f"{', '.join(FORMATS)}")
        if format not in self.formats():
            raise ValueError(f"data={self.name} cannot read the format {format!r} "
                             f"({FORMATS[format]}); it reads {', '.join(self.formats())}")
        if getattr(self, "streaming", False):  # data.streaming=true
            from pipelines.data.streaming import check_streaming_format

            check_streaming_format(format, self.name)
        return getattr(self, format)()
