"""Checkpoints in and out of other formats: the reference implementation's
state dicts (`reference`) and the exported generator (`export`: ONNX,
TorchScript, or the reference's `latest_net_G.pth`)."""
