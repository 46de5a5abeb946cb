"""From corpus files to training windows: reading text and tables, corpus sources and records, the vocabulary, encoding
and its cache, the split, TBPTT streams."""
