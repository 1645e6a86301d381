"""Plots: training curves, prediction grids, confusion matrices, per-class IoU, learning-rate sweeps.

matplotlib is imported only when something is drawn. ``plots`` holds the curves and the grid primitives,
``pictures`` what each task draws (and `show_predictions`), ``metric_plots`` the per-class pictures and
``detection_plots`` boxes.
"""

from .metric_plots import plot_class_iou, plot_confusion_matrix
from .pictures import show_predictions
from .plots import plot_history

__all__ = ["plot_class_iou", "plot_confusion_matrix", "plot_history", "show_predictions"]
