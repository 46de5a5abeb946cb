"""A trained model in other formats: ONNX, TorchScript, a page that writes in the browser."""
