"""File formats: the typed records passed between stages, input readers and decompression, the output columns,
file names and sinks. No model code; Beam only in the sinks (its file-sink classes), no pipeline steps."""
