"""Other servers a team might put this model behind (Triton through PyTriton, LitServe), each a
small script running the same CaptionEngine, for benchmarks.peers to compare with this server."""
