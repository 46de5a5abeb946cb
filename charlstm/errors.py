"""The one exception type for errors a user can cause; the CLI turns it into a one-line message."""


class CharlstmError(Exception):
    """A problem with the user's input (file, flag, checkpoint): shown as one line, exit code 1."""


class PeerFailedError(CharlstmError):
    """Under torchrun: another process failed and says why itself; this one exits 1 without repeating it."""
