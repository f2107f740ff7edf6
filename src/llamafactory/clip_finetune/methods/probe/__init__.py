"""Linear probes on the frozen image features (``linear_probe``) and LP-FT's first stage (``lp_ft``)."""
