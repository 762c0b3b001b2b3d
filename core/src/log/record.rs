//! The record format of the segment-file log: one checksummed record per event (to be written).
