"""The query language: parse (``parser``), prune and filter (``filters``), shape (``pipes``), run (``executor``)."""
