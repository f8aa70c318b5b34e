"""The patch catalog (`catalog.py`, data only) and one module per upstream family (implementations)."""
