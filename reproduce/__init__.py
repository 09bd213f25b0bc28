"""Scripts that rebuild the papers' results tables with one command."""
