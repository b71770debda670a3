"""Scale-out: the heavy parts of churnlab on a Dask cluster (docs/scale-out.md)."""
