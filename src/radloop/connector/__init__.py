"""Everything between DICOM peers and the store: receiving (DIMSE, DICOMweb, pulls), storing,
series completion, routing, and sending results out."""
