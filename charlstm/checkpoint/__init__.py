"""The checkpoint file: saving it atomically, and the one safe load (a bounded zip, a restricted unpickler, payload
checks)."""
