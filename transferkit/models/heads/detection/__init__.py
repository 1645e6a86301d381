"""Detection heads: torchvision's FCOS, RetinaNet, Faster R-CNN and SSDLite, and transferkit's own YOLO head.

Each head builds torchvision's own parts (prediction heads, anchor generators, box coders, matchers,
losses, RPN and RoI heads, post-processing) and is only the glue between them and the neck's levels:

- it picks the levels it reads (``levels``) and adds the coarse ones torchvision's model expects (P6/P7
  convolutions, or Faster R-CNN's max-pool level);
- anchors come from the levels' strides in ``feature_info``, never from ``image size // map size``
  (which drifts on sizes that are not a multiple of the coarsest stride), and Faster R-CNN's RoI pooling
  scales are set from the same strides instead of being guessed from the first batch;
- ``num_classes`` counts the real classes; where torchvision's softmax keeps class 0 for the background
  (Faster R-CNN, SSDLite) the head shifts the labels on the way in and back on the way out;
- there is no ``GeneralizedRCNNTransform``: images arrive resized and normalised (once) by transferkit's
  data pipeline, so boxes are in the input tensor's pixels, in and out.

A head is called as ``head(features, input_size, targets=None)``. In training mode it takes targets (a list
of ``{"boxes": [M, 4] xyxy pixels, "labels": [M]}``, M may be 0) and returns torchvision's loss dict; in eval
mode it returns one ``{"boxes" [D, 4], "scores" [D], "labels" [D]}`` per image, boxes clipped to the input.
One file per detector (``fcos``, ``retinanet``, ``ssdlite``, ``fasterrcnn``) and the glue they share
(``parts``). The torchvision model objects are kept for their loss and post-processing methods only;
their ``forward`` (with its resize to 800 px and second normalisation) is never called.
"""

from __future__ import annotations

from .fasterrcnn import FasterRCNNHead
from .fcos import FCOSHead
from .parts import DetectionHead, detection_levels
from .retinanet import RetinaNetHead
from .ssdlite import SSDLiteHead
from .yolo import YOLOHead

__all__ = [
    "DetectionHead",
    "FCOSHead",
    "FasterRCNNHead",
    "RetinaNetHead",
    "SSDLiteHead",
    "YOLOHead",
    "detection_levels",
]
