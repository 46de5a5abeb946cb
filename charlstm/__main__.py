import signal

# Ctrl-C outside the training loop (which saves first) ends the process at once, without a traceback.
signal.signal(signal.SIGINT, signal.SIG_DFL)

from charlstm.cli.app import run  # noqa: E402

if __name__ == "__main__":
    run()
