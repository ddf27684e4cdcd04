"""Writers that turn pipeline results into conformant DICOM objects (SEG, …)."""

from radloop.pipelines.writers.seg import write_seg

__all__ = ["write_seg"]
