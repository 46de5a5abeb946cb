"""The network: `CharRNN` (embedding, recurrent stack, head) and the cells beyond PyTorch's fused three."""
