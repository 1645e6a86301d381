"""Files and the network: weights files, saved model folders, the Hub, export."""
