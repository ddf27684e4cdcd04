"""Training export: reviewed AI results become datasets for retraining (MONAI, MSD, nnU-Net v2).

Radiologists' decisions (accept / edit / reject, :class:`radloop.core.models.Review`) select the
cases; the source series becomes a NIfTI image and the final mask (edited, or the accepted AI
mask) a NIfTI label on the same grid; patients are pseudonymised with a keyed hash and split
into training and validation by patient; each case gets a provenance manifest. Start at
:func:`radloop.training_export.export.export_dataset`.
"""

from radloop.training_export.export import ExportRequest, ExportSummary, export_dataset
from radloop.training_export.formats import ExportFormat

__all__ = ["ExportFormat", "ExportRequest", "ExportSummary", "export_dataset"]
