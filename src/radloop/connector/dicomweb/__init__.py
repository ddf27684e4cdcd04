"""DICOMweb (PS3.18): STOW-RS receiving, QIDO-RS searching and WADO-RS retrieving over the store."""
