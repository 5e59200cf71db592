"""divebatch: reproducible replication of DiveBatch (gradient-diversity aware batch size adaptation)."""

__version__ = "0.1.0"
