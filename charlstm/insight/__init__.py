"""What the network does inside: traces of every gate and state per character, feature detectors, the HTML inspector
page."""
