"""charlstm: character-level LSTM language models, trained and sampled from the command line."""

__version__ = "0.1.0"
