"""Local storage: write-ahead log, memtable, immutable blocks and partition manifests."""
