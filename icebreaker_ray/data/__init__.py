"""Data contracts (pyarrow schemas) and validated, atomic Parquet I/O with stage manifests."""
