//! The recovery scan of a segment: the valid records and the torn tail (to be written).
