"""Models: `TransferModel`, `build_model`, backbones, necks, heads, freezing, features."""
