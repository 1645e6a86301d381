"""Plots: training curves, prediction grids, confusion matrices, per-class IoU, learning-rate sweeps.

matplotlib is imported only when something is drawn. ``plots`` holds the curves and the grid primitives,
``pictures`` what each task draws (`show_predictions`, `show_batch`), ``metric_plots`` the per-class
pictures, ``detection_plots`` boxes, ``batch`` a batch's images with their targets and ``heatmaps`` maps
over images.
"""

from .metric_plots import plot_class_iou, plot_confusion_matrix
from .pictures import show_batch, show_predictions
from .plots import plot_history

__all__ = ["plot_class_iou", "plot_confusion_matrix", "plot_history", "show_batch", "show_predictions"]
