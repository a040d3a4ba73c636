//! Discovery: scan `dicom_root`, map scan IDs through the CSV, validate sessions.
