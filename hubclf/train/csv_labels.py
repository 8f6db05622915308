"""Moved to :mod:`hubclf.data.csv_labels`; this module re-exports it for one release.

    from hubclf.data.csv_labels import read_labels_csv   # was hubclf.train.csv_labels
"""

from hubclf.data.csv_labels import LabelsCSVError, read_labels_csv

__all__ = ["LabelsCSVError", "read_labels_csv"]
