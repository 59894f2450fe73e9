"""The low floor every room uses: errors, checks of untrusted values, strict JSON, memory guards, naming."""
