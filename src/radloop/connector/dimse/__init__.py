"""DICOM networking (DIMSE): the C-STORE/C-ECHO SCP and the C-STORE SCU."""
