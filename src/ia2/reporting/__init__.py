"""Reports regenerated from result rows: dev-only selection, cells, paired and pre-registered tests, tables,
figures, and adapter subspace analyses."""
